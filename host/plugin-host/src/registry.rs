//! Installed plugins on disk: `<dir>/<id>/{component.wasm, plugin.toml, state.json}` plus an
//! append-only audit log (`<dir>/audit.jsonl`). Install checks everything before writing
//! (manifest, component against manifest, the user's decision on each capability) and
//! publishes the plugin with one rename, so a failed install leaves nothing behind.

use crate::capability::{Capability, Grants};
use crate::error::LoadError;
use crate::manifest::Manifest;
use crate::runtime::{Plugin, PluginRuntime};
use crate::services::AuditEntry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

const COMPONENT: &str = "component.wasm";
const MANIFEST: &str = "plugin.toml";
const STATE: &str = "state.json";
const AUDIT: &str = "audit.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("plugin `{0}` is not installed")]
    NotInstalled(String),
    #[error("plugin `{0}` is already installed; uninstall it first")]
    AlreadyInstalled(String),
    #[error("plugin `{0}` is disabled; enable it with `videosdgx plugins enable {0}`")]
    Disabled(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> RegistryError + '_ {
    move |e| RegistryError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// What the user decided at install, and whether the plugin may run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct State {
    enabled: bool,
    granted: Vec<Capability>,
    denied: Vec<Capability>,
    component_sha256: String,
    installed_at: u64,
}

/// An installed plugin, as `plugins list/show` report it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct InstalledPlugin {
    #[serde(flatten)]
    pub manifest: Manifest,
    pub enabled: bool,
    pub granted: Vec<Capability>,
    pub denied: Vec<Capability>,
    pub component_sha256: String,
    /// Seconds since the Unix epoch.
    pub installed_at: u64,
}

impl InstalledPlugin {
    pub fn grants(&self) -> Grants {
        Grants::new(self.granted.iter().copied())
    }
}

/// One audited host call with its time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub plugin_id: String,
    pub function: String,
    pub capability: Option<Capability>,
    pub allowed: bool,
    pub error: Option<String>,
    pub detail: String,
}

pub struct Registry {
    dir: PathBuf,
}

impl Registry {
    pub fn open(dir: &Path) -> Result<Registry, RegistryError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(Registry {
            dir: dir.to_path_buf(),
        })
    }

    /// Checks and installs a plugin. `decide` is asked about each requested capability
    /// (the CLI prompts or reads --grant/--deny); nothing is written unless all checks pass.
    pub fn install(
        &self,
        runtime: &PluginRuntime,
        manifest_text: &str,
        wasm: &[u8],
        mut decide: impl FnMut(&Manifest, Capability) -> bool,
    ) -> Result<InstalledPlugin, RegistryError> {
        let manifest = Manifest::parse(manifest_text).map_err(LoadError::from)?;
        let final_dir = self.dir.join(&manifest.id);
        if final_dir.exists() {
            return Err(RegistryError::AlreadyInstalled(manifest.id));
        }
        runtime.load(manifest.clone(), wasm)?;
        let (mut granted, mut denied) = (Vec::new(), Vec::new());
        for &capability in &manifest.capabilities {
            if decide(&manifest, capability) {
                granted.push(capability)
            } else {
                denied.push(capability)
            }
        }
        let state = State {
            enabled: true,
            granted,
            denied,
            component_sha256: hex::encode(Sha256::digest(wasm)),
            installed_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let staging = self.dir.join(format!(".installing-{}", manifest.id));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).map_err(io(&staging))?;
        let write = |name: &str, bytes: &[u8]| {
            std::fs::write(staging.join(name), bytes).map_err(io(&staging))
        };
        write(COMPONENT, wasm)?;
        write(MANIFEST, manifest_text.as_bytes())?;
        write(
            STATE,
            &serde_json::to_vec_pretty(&state).expect("state serialises"),
        )?;
        std::fs::rename(&staging, &final_dir).map_err(io(&final_dir))?;
        Ok(installed(manifest, state))
    }

    pub fn list(&self) -> Result<Vec<InstalledPlugin>, RegistryError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if entry.path().is_dir() && !name.starts_with('.') {
                out.push(self.get(&name)?);
            }
        }
        out.sort_by(|a, b| a.manifest.id.cmp(&b.manifest.id));
        Ok(out)
    }

    pub fn get(&self, id: &str) -> Result<InstalledPlugin, RegistryError> {
        let dir = self.plugin_dir(id)?;
        let manifest_path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&manifest_path).map_err(io(&manifest_path))?;
        let manifest = Manifest::parse(&text).map_err(LoadError::from)?;
        Ok(installed(manifest, self.state(id)?))
    }

    /// Compiles (cached) and returns a plugin ready to call, with its grants.
    pub fn load(
        &self,
        runtime: &PluginRuntime,
        id: &str,
    ) -> Result<(Plugin, Grants), RegistryError> {
        let plugin = self.get(id)?;
        if !plugin.enabled {
            return Err(RegistryError::Disabled(id.to_string()));
        }
        let path = self.plugin_dir(id)?.join(COMPONENT);
        let wasm = std::fs::read(&path).map_err(io(&path))?;
        let grants = plugin.grants();
        Ok((runtime.load(plugin.manifest, &wasm)?, grants))
    }

    pub fn set_enabled(&self, id: &str, enabled: bool) -> Result<InstalledPlugin, RegistryError> {
        let mut state = self.state(id)?;
        state.enabled = enabled;
        let path = self.plugin_dir(id)?.join(STATE);
        let partial = path.with_extension("partial");
        std::fs::write(
            &partial,
            serde_json::to_vec_pretty(&state).expect("state serialises"),
        )
        .map_err(io(&partial))?;
        std::fs::rename(&partial, &path).map_err(io(&path))?;
        self.get(id)
    }

    /// Removes the plugin; its audit records stay.
    pub fn uninstall(&self, id: &str) -> Result<(), RegistryError> {
        let dir = self.plugin_dir(id)?;
        std::fs::remove_dir_all(&dir).map_err(io(&dir))
    }

    pub fn audit(&self, entry: &AuditEntry) -> Result<(), RegistryError> {
        let record = AuditRecord {
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            plugin_id: entry.plugin_id.clone(),
            function: entry.function.to_string(),
            capability: entry.capability,
            allowed: entry.allowed,
            error: entry.error.clone(),
            detail: entry.detail.clone(),
        };
        let path = self.dir.join(AUDIT);
        let mut line = serde_json::to_vec(&record).expect("audit record serialises");
        line.push(b'\n');
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        file.write_all(&line).map_err(io(&path))
    }

    /// Audit records, oldest first, of one plugin or all.
    pub fn audit_records(
        &self,
        plugin_id: Option<&str>,
    ) -> Result<Vec<AuditRecord>, RegistryError> {
        let path = self.dir.join(AUDIT);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&path)(e)),
        };
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str::<AuditRecord>(line).ok())
            .filter(|r| plugin_id.is_none_or(|id| r.plugin_id == id))
            .collect())
    }

    fn plugin_dir(&self, id: &str) -> Result<PathBuf, RegistryError> {
        let valid = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        let dir = self.dir.join(id);
        if !valid || !dir.join(STATE).exists() {
            return Err(RegistryError::NotInstalled(id.to_string()));
        }
        Ok(dir)
    }

    fn state(&self, id: &str) -> Result<State, RegistryError> {
        let path = self.plugin_dir(id)?.join(STATE);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }
}

fn installed(manifest: Manifest, state: State) -> InstalledPlugin {
    InstalledPlugin {
        manifest,
        enabled: state.enabled,
        granted: state.granted,
        denied: state.denied,
        component_sha256: state.component_sha256,
        installed_at: state.installed_at,
    }
}
