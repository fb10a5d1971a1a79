//! Capabilities and the one place that decides whether a plugin may use one. Every host
//! import names its capability and goes through [`Grants::check`]; nothing else grants.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Something a plugin may be allowed to do through the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Capability {
    #[serde(rename = "project:read")]
    ProjectRead,
    #[serde(rename = "project:write")]
    ProjectWrite,
    #[serde(rename = "assets:read")]
    AssetsRead,
    #[serde(rename = "assets:write")]
    AssetsWrite,
    #[serde(rename = "generate")]
    Generate,
    #[serde(rename = "text-generation")]
    TextGeneration,
    /// Questions about images and videos (API 0.2.0's `vision`).
    #[serde(rename = "vision")]
    Vision,
    #[serde(rename = "media")]
    Media,
    #[serde(rename = "render")]
    Render,
    /// Real wall and monotonic clocks through WASI; without it both read zero.
    #[serde(rename = "clock")]
    Clock,
}

impl Capability {
    pub const ALL: [Capability; 10] = [
        Capability::ProjectRead,
        Capability::ProjectWrite,
        Capability::AssetsRead,
        Capability::AssetsWrite,
        Capability::Generate,
        Capability::TextGeneration,
        Capability::Vision,
        Capability::Media,
        Capability::Render,
        Capability::Clock,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::ProjectRead => "project:read",
            Capability::ProjectWrite => "project:write",
            Capability::AssetsRead => "assets:read",
            Capability::AssetsWrite => "assets:write",
            Capability::Generate => "generate",
            Capability::TextGeneration => "text-generation",
            Capability::Vision => "vision",
            Capability::Media => "media",
            Capability::Render => "render",
            Capability::Clock => "clock",
        }
    }

    /// What granting it allows, for install prompts.
    pub fn explanation(self) -> &'static str {
        match self {
            Capability::ProjectRead => {
                "read the current project's documents (script, notes, storyboards)"
            }
            Capability::ProjectWrite => "create and overwrite the current project's documents",
            Capability::AssetsRead => "search and read files in the asset library",
            Capability::AssetsWrite => "add files to the asset library",
            Capability::Generate => "queue image and video generation jobs on the GPU",
            Capability::TextGeneration => "ask the local language model for text",
            Capability::Vision => {
                "ask the local language model about the images and videos it may read"
            }
            Capability::Media => {
                "probe video assets, extract frames, upscale and interpolate videos"
            }
            Capability::Render => "render edit lists into new video assets",
            Capability::Clock => "read the current time",
        }
    }

    pub fn known_list() -> String {
        Capability::ALL
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s.trim())
            .ok_or_else(|| {
                format!(
                    "unknown capability `{s}`; known capabilities: {}",
                    Capability::known_list()
                )
            })
    }
}

/// The capabilities a user granted one plugin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants(Vec<Capability>);

impl Grants {
    pub fn new(capabilities: impl IntoIterator<Item = Capability>) -> Grants {
        let mut all: Vec<Capability> = capabilities.into_iter().collect();
        all.sort();
        all.dedup();
        Grants(all)
    }

    pub fn allows(&self, capability: Capability) -> bool {
        self.0.contains(&capability)
    }

    /// The granter: `Ok` when granted, else the WIT `denied` error naming the capability.
    pub fn check(&self, capability: Capability) -> Result<(), crate::PluginError> {
        if self.allows(capability) {
            Ok(())
        } else {
            Err(crate::PluginError::Denied(capability.as_str().to_string()))
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        self.0.iter().copied()
    }
}
