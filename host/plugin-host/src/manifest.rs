//! `plugin.toml`: what a plugin says it is and asks for. Parsing refuses anything the host
//! could not honour (unknown world, unknown capability, incompatible API version) with a
//! message that names the field.

use crate::api::ApiVersion;
use crate::capability::Capability;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The kind of plugin: which WIT world the component targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    Planner,
    Expander,
    Stitcher,
    Reviewer,
}

impl World {
    pub const ALL: [World; 4] = [
        World::Planner,
        World::Expander,
        World::Stitcher,
        World::Reviewer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            World::Planner => "planner",
            World::Expander => "expander",
            World::Stitcher => "stitcher",
            World::Reviewer => "reviewer",
        }
    }

    /// The oldest API version that has this world.
    pub fn since(self) -> ApiVersion {
        match self {
            World::Reviewer => ApiVersion::V0_2,
            _ => ApiVersion::V0_1,
        }
    }

    /// The interface a component of this world exports.
    pub fn export_interface(self) -> &'static str {
        match self {
            World::Planner => "planning",
            World::Expander => "expansion",
            World::Stitcher => "stitching",
            World::Reviewer => "reviewing",
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for World {
    type Err = ManifestError;
    fn from_str(s: &str) -> Result<Self, ManifestError> {
        World::ALL
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or_else(|| ManifestError::UnknownWorld(s.to_string()))
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    #[error("plugin.toml is not valid TOML or misses a field: {0}")]
    Syntax(String),
    #[error(
        "unknown world `{0}`: this host runs `planner`, `expander`, `stitcher` and `reviewer` plugins"
    )]
    UnknownWorld(String),
    #[error("world `{world}` exists from API {since} on; the plugin says api-version = {api}")]
    WorldTooNew {
        world: World,
        since: ApiVersion,
        api: semver::Version,
    },
    #[error("unknown capability `{0}`; known capabilities: {known}", known = Capability::known_list())]
    UnknownCapability(String),
    #[error(
        "plugin id `{0}` must be 1-64 lower-case letters, digits or dashes, starting with a letter"
    )]
    BadId(String),
    #[error("`{field}` = `{value}` is not a semantic version (like 0.1.0)")]
    BadVersion { field: &'static str, value: String },
    #[error(transparent)]
    Api(#[from] crate::api::ApiError),
}

/// A parsed, checked `plugin.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub name: String,
    pub version: semver::Version,
    /// The WIT package version the component was built against.
    pub api_version: semver::Version,
    pub world: World,
    pub description: String,
    /// Capabilities the plugin asks for; the user grants or refuses each at install.
    pub capabilities: Vec<Capability>,
}

/// The file as written, before checking.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawManifest {
    id: String,
    name: Option<String>,
    version: String,
    api_version: String,
    world: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    capabilities: Vec<String>,
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.message().to_string()))?;
        if !valid_id(&raw.id) {
            return Err(ManifestError::BadId(raw.id));
        }
        let version =
            semver::Version::parse(&raw.version).map_err(|_| ManifestError::BadVersion {
                field: "version",
                value: raw.version.clone(),
            })?;
        let api_version =
            semver::Version::parse(&raw.api_version).map_err(|_| ManifestError::BadVersion {
                field: "api-version",
                value: raw.api_version.clone(),
            })?;
        let api = ApiVersion::supporting(&api_version)?;
        let world: World = raw.world.parse()?;
        if api < world.since() {
            return Err(ManifestError::WorldTooNew {
                world,
                since: world.since(),
                api: api_version,
            });
        }
        let mut capabilities = Vec::new();
        for name in &raw.capabilities {
            let capability: Capability = name
                .parse()
                .map_err(|_| ManifestError::UnknownCapability(name.clone()))?;
            if !capabilities.contains(&capability) {
                capabilities.push(capability);
            }
        }
        Ok(Manifest {
            name: raw.name.unwrap_or_else(|| raw.id.clone()),
            id: raw.id,
            version,
            api_version,
            world,
            description: raw.description,
            capabilities,
        })
    }

    /// The host's view of which WIT version this plugin speaks.
    pub fn api(&self) -> ApiVersion {
        ApiVersion::supporting(&self.api_version).expect("checked when parsed")
    }
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}
