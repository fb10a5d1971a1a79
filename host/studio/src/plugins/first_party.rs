//! The plugins that come with the binary: built for wasm32-wasip2 by the studio's build script
//! (build.rs) from plugins/, embedded, and installed into a data directory when it is opened.
//! A newer binary upgrades them in place; one the user disabled stays disabled, one the user
//! uninstalled stays uninstalled, and a user's own plugin of the same id is left alone.

use super::Plugins;
use super::registry::{self, FirstPartyOutcome};
use crate::db::Db;
use crate::error::{Result, StudioError};
use videosdgx_plugin_host::Manifest;

/// One embedded plugin: its plugin.toml and its component.
pub struct Embedded {
    pub manifest: &'static str,
    pub component: &'static [u8],
}

macro_rules! embedded {
    ($dir:literal, $file:literal) => {
        Embedded {
            manifest: include_str!(concat!("../../../../plugins/", $dir, "/plugin.toml")),
            component: include_bytes!(concat!(env!("OUT_DIR"), "/", $file, ".wasm")),
        }
    };
}

/// Planner, expander, stitcher and reviewer: what `videosdgx render` needs.
pub const EMBEDDED: [Embedded; 4] = [
    embedded!("storyboard-planner", "storyboard_planner"),
    embedded!("prompt-expander", "prompt_expander"),
    embedded!("shot-stitcher", "shot_stitcher"),
    embedded!("reviewer", "reviewer"),
];

/// Installs or upgrades the embedded plugins (see [`registry::put_first_party`]); logs what
/// changed.
pub fn sync(db: &Db, plugins: &Plugins) -> Result<()> {
    for embedded in &EMBEDDED {
        let manifest = Manifest::parse(embedded.manifest).map_err(|e| {
            StudioError::Internal(anyhow::anyhow!("an embedded plugin.toml is invalid: {e}"))
        })?;
        match registry::put_first_party(db, plugins, &manifest, embedded.component)? {
            FirstPartyOutcome::Installed => {
                tracing::info!(
                    "installed first-party plugin {} {}",
                    manifest.id,
                    manifest.version
                )
            }
            FirstPartyOutcome::Upgraded => {
                tracing::info!(
                    "upgraded first-party plugin {} to {}",
                    manifest.id,
                    manifest.version
                )
            }
            FirstPartyOutcome::Unchanged => {}
        }
    }
    Ok(())
}
