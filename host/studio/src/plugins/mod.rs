//! Plugins in the studio: the registry of installed plugins in the database ([`registry`]), the
//! plugins that come with the binary ([`first_party`]), the host services a plugin call
//! reaches, implemented over the studio ([`services`]), the calls that plan, expand, stitch
//! and review ([`calls`]) and the job kinds that run them ([`runners`]). The sandbox itself (limits, grants, WIT bindings) is the plugin host's; this
//! module never lets a plugin reach anything except through [`services::StudioServices`].

pub mod calls;
pub mod first_party;
pub mod registry;
pub mod runners;
pub mod services;

use crate::error::{Result, StudioError};
use registry::InstalledPlugin;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use videosdgx_plugin_host::{Plugin, PluginRuntime};

/// The plugin runtime (started on first use), the component store and compiled plugins.
pub struct Plugins {
    /// `<data>/plugins`: components named by their SHA-256.
    dir: PathBuf,
    /// `<data>/cache/plugins`: compiled components, keyed by wasmtime version and content.
    cache_dir: PathBuf,
    runtime: OnceLock<PluginRuntime>,
    compiled: Mutex<HashMap<String, Arc<Plugin>>>,
}

impl Plugins {
    pub fn new(data_dir: &Path) -> Plugins {
        Plugins {
            dir: data_dir.join("plugins"),
            cache_dir: data_dir.join("cache").join("plugins"),
            runtime: OnceLock::new(),
            compiled: Mutex::new(HashMap::new()),
        }
    }

    /// The wasmtime runtime, created at first use (CLI commands that never touch a plugin do
    /// not pay for it).
    pub fn runtime(&self) -> Result<&PluginRuntime> {
        if let Some(runtime) = self.runtime.get() {
            return Ok(runtime);
        }
        let runtime = PluginRuntime::new(Some(&self.cache_dir))
            .map_err(|e| StudioError::Internal(e.context("starting the plugin runtime")))?;
        Ok(self.runtime.get_or_init(|| runtime))
    }

    fn store_component(&self, sha: &str, wasm: &[u8]) -> Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = registry::component_path(&self.dir, sha);
        if path.exists() {
            return Ok(());
        }
        let partial = path.with_extension("partial");
        std::fs::write(&partial, wasm)?;
        std::fs::File::open(&partial)?.sync_all()?;
        std::fs::rename(&partial, &path)?;
        Ok(())
    }

    fn remove_component(&self, sha: &str) {
        let path = registry::component_path(&self.dir, sha);
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!("cannot remove {}: {e}", path.display());
        }
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sha);
    }

    /// The plugin compiled and linked, kept in memory for the next call.
    fn compiled(&self, installed: &InstalledPlugin) -> Result<Arc<Plugin>> {
        let sha = &installed.component_sha256;
        if let Some(plugin) = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sha)
            .filter(|p| p.manifest() == &installed.manifest)
        {
            return Ok(plugin.clone());
        }
        let path = registry::component_path(&self.dir, sha);
        let wasm = std::fs::read(&path).map_err(|e| {
            StudioError::Internal(anyhow::anyhow!(
                "the component of plugin `{}` ({}) cannot be read: {e}; reinstall the plugin",
                installed.id,
                path.display()
            ))
        })?;
        let plugin = self
            .runtime()?
            .load(installed.manifest.clone(), &wasm)
            .map_err(|e| StudioError::Invalid(format!("plugin `{}`: {e}", installed.id)))?;
        let plugin = Arc::new(plugin);
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sha.clone(), plugin.clone());
        Ok(plugin)
    }
}
