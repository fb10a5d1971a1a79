//! Installed plugins in the studio database: a row in `plugins` (the checked manifest), one row
//! per requested capability in `plugin_grants` (granted or refused), and the component's bytes
//! stored by SHA-256 under `<data>/plugins/`. Install checks the manifest and the component
//! (it must load in the runtime) before anything is written. Every host call a plugin makes is
//! a row in `audit_log`, kept after the plugin is removed.

use super::Plugins;
use crate::db::{Db, now_ms, rfc3339};
use crate::error::{Result, StudioError};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use utoipa::ToSchema;
use videosdgx_plugin_host::{AuditEntry, Capability, Grants, Manifest, Plugin, World};

/// An installed plugin, as the CLI and the API show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InstalledPlugin {
    pub id: String,
    pub name: String,
    pub version: String,
    pub api_version: String,
    /// planner, expander, stitcher or reviewer.
    pub world: String,
    pub description: String,
    /// What the plugin asked for.
    pub capabilities: Vec<String>,
    pub enabled: bool,
    /// Came with the binary (installed at first start, upgraded by newer binaries).
    pub first_party: bool,
    pub granted: Vec<String>,
    pub denied: Vec<String>,
    pub component_sha256: String,
    pub installed_at: String,
    #[serde(skip)]
    pub manifest: Manifest,
}

impl InstalledPlugin {
    pub fn grants(&self) -> Grants {
        Grants::new(self.granted.iter().filter_map(|c| c.parse().ok()))
    }
}

/// What a component asks for, read without installing it (the install dialog's content).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Inspection {
    pub id: String,
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub world: String,
    pub description: String,
    pub capabilities: Vec<String>,
    /// What granting each requested capability allows, in words.
    pub explanations: BTreeMap<String, String>,
    pub component_sha256: String,
    /// Whether a plugin with this id is installed already (installing it again is refused).
    pub installed: bool,
}

/// One audited host call.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditRecord {
    pub id: i64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub at: String,
    pub plugin_id: String,
    pub job_id: Option<i64>,
    pub project_id: Option<i64>,
    /// `interface.function`, e.g. `assets.read`.
    pub function: String,
    /// The capability the call needed; absent for always-allowed calls (log, progress).
    pub capability: Option<String>,
    /// False when the capability was not granted.
    pub allowed: bool,
    /// The error returned to the plugin, if any.
    pub error: Option<String>,
    /// The call's arguments, abbreviated.
    pub detail: String,
}

fn invalid(err: impl std::fmt::Display) -> StudioError {
    StudioError::Invalid(err.to_string())
}

fn not_installed(id: &str) -> StudioError {
    StudioError::not_found("plugin", format!("`{id}`"))
}

/// Parses and checks a manifest and its component without writing anything.
pub fn inspect(
    db: &Db,
    plugins: &Plugins,
    manifest_text: &str,
    wasm: &[u8],
) -> Result<(Manifest, Inspection)> {
    let manifest = Manifest::parse(manifest_text).map_err(invalid)?;
    plugins
        .runtime()?
        .load(manifest.clone(), wasm)
        .map_err(invalid)?;
    let installed = db.with(|c| {
        Ok(c.query_row(
            "SELECT EXISTS(SELECT 1 FROM plugins WHERE id = ?1)",
            [&manifest.id],
            |r| r.get(0),
        )?)
    })?;
    let inspection = Inspection {
        id: manifest.id.clone(),
        name: manifest.name.clone(),
        version: manifest.version.to_string(),
        api_version: manifest.api_version.to_string(),
        world: manifest.world.to_string(),
        description: manifest.description.clone(),
        capabilities: names(&manifest.capabilities),
        explanations: manifest
            .capabilities
            .iter()
            .map(|c| (c.to_string(), c.explanation().to_string()))
            .collect(),
        component_sha256: hex::encode(Sha256::digest(wasm)),
        installed,
    };
    Ok((manifest, inspection))
}

/// Checks and installs a plugin. `decide` answers for each requested capability whether it is
/// granted; nothing is written unless manifest and component pass every check.
pub fn install(
    db: &Db,
    plugins: &Plugins,
    manifest_text: &str,
    wasm: &[u8],
    mut decide: impl FnMut(Capability) -> bool,
) -> Result<InstalledPlugin> {
    let (manifest, inspection) = inspect(db, plugins, manifest_text, wasm)?;
    if inspection.installed {
        return Err(already_installed(&manifest.id));
    }
    let decisions: Vec<(Capability, bool)> = manifest
        .capabilities
        .iter()
        .map(|&c| (c, decide(c)))
        .collect();
    let sha = inspection.component_sha256;
    plugins.store_component(&sha, wasm)?;
    let manifest_json = serde_json::to_string(&manifest).map_err(anyhow::Error::from)?;
    let now = now_ms();
    db.transaction(|tx| {
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO plugins
                (id, version, api_version, world, manifest, component_sha256, enabled, installed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7)",
            params![
                manifest.id,
                manifest.version.to_string(),
                manifest.api_version.to_string(),
                manifest.world.as_str(),
                manifest_json,
                sha,
                now
            ],
        )?;
        if inserted == 0 {
            return Err(already_installed(&manifest.id));
        }
        for (capability, granted) in &decisions {
            tx.execute(
                "INSERT INTO plugin_grants (plugin_id, capability, granted, decided_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![manifest.id, capability.as_str(), granted, now],
            )?;
        }
        Ok(())
    })?;
    get(db, &manifest.id)
}

/// What [`put_first_party`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstPartyOutcome {
    Installed,
    Upgraded,
    /// Already this component, or left alone: uninstalled by the user, replaced by the user's
    /// own plugin of the same id, or newer than this binary's.
    Unchanged,
}

/// Installs a plugin that comes with the binary, granting what its manifest asks for, or
/// upgrades an installed first-party plugin to this binary's component when that is not older.
/// An upgrade keeps whether the plugin is enabled and every grant the user decided; a
/// capability the new version adds is granted. The component was built with the binary, so it
/// is not compiled here: that happens at its first call.
pub fn put_first_party(
    db: &Db,
    plugins: &Plugins,
    manifest: &Manifest,
    wasm: &[u8],
) -> Result<FirstPartyOutcome> {
    let sha = hex::encode(Sha256::digest(wasm));
    let installed = db.with(|c| load_row(c, &manifest.id))?;
    let removed: bool = db.with(|c| {
        Ok(c.query_row(
            "SELECT EXISTS(SELECT 1 FROM removed_first_party_plugins WHERE id = ?1)",
            [&manifest.id],
            |r| r.get(0),
        )?)
    })?;
    let outcome = match &installed {
        None if removed => return Ok(FirstPartyOutcome::Unchanged),
        None => FirstPartyOutcome::Installed,
        Some(p) if !p.first_party || p.component_sha256 == sha => {
            return Ok(FirstPartyOutcome::Unchanged);
        }
        Some(p) if p.manifest.version > manifest.version => {
            return Ok(FirstPartyOutcome::Unchanged);
        }
        Some(_) => FirstPartyOutcome::Upgraded,
    };
    plugins.store_component(&sha, wasm)?;
    let manifest_json = serde_json::to_string(manifest).map_err(anyhow::Error::from)?;
    let now = now_ms();
    db.transaction(|tx| {
        tx.execute(
            "INSERT INTO plugins
                (id, version, api_version, world, manifest, component_sha256, enabled,
                 installed_at, first_party)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, 1)
             ON CONFLICT (id) DO UPDATE SET version = ?2, api_version = ?3, world = ?4,
                manifest = ?5, component_sha256 = ?6",
            params![
                manifest.id,
                manifest.version.to_string(),
                manifest.api_version.to_string(),
                manifest.world.as_str(),
                manifest_json,
                sha,
                now
            ],
        )?;
        for capability in &manifest.capabilities {
            tx.execute(
                "INSERT OR IGNORE INTO plugin_grants (plugin_id, capability, granted, decided_at)
                 VALUES (?1, ?2, 1, ?3)",
                params![manifest.id, capability.as_str(), now],
            )?;
        }
        Ok(())
    })?;
    if let Some(old) = installed {
        remove_unused_component(db, plugins, &old.component_sha256)?;
    }
    Ok(outcome)
}

fn already_installed(id: &str) -> StudioError {
    StudioError::Conflict(format!(
        "plugin `{id}` is already installed; uninstall it first"
    ))
}

fn names(capabilities: &[Capability]) -> Vec<String> {
    capabilities.iter().map(|c| c.to_string()).collect()
}

fn load_row(c: &rusqlite::Connection, id: &str) -> Result<Option<InstalledPlugin>> {
    let row = c
        .query_row(
            "SELECT manifest, component_sha256, enabled, installed_at, first_party
             FROM plugins WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, bool>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, bool>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((manifest_json, sha, enabled, installed_at, first_party)) = row else {
        return Ok(None);
    };
    let manifest: Manifest = serde_json::from_str(&manifest_json).map_err(|e| {
        StudioError::Internal(anyhow::anyhow!(
            "stored manifest of plugin `{id}` is damaged: {e}"
        ))
    })?;
    let mut stmt = c.prepare_cached(
        "SELECT capability, granted FROM plugin_grants WHERE plugin_id = ?1 ORDER BY capability",
    )?;
    let (mut granted, mut denied) = (Vec::new(), Vec::new());
    for row in stmt.query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?)))? {
        let (capability, yes) = row?;
        if yes {
            granted.push(capability)
        } else {
            denied.push(capability)
        }
    }
    Ok(Some(InstalledPlugin {
        id: manifest.id.clone(),
        name: manifest.name.clone(),
        version: manifest.version.to_string(),
        api_version: manifest.api_version.to_string(),
        world: manifest.world.to_string(),
        description: manifest.description.clone(),
        capabilities: names(&manifest.capabilities),
        enabled,
        first_party,
        granted,
        denied,
        component_sha256: sha,
        installed_at: rfc3339(installed_at),
        manifest,
    }))
}

pub fn get(db: &Db, id: &str) -> Result<InstalledPlugin> {
    db.with(|c| load_row(c, id))?
        .ok_or_else(|| not_installed(id))
}

/// Every installed plugin, by id.
pub fn list(db: &Db) -> Result<Vec<InstalledPlugin>> {
    db.with(|c| {
        let mut stmt = c.prepare("SELECT id FROM plugins ORDER BY id")?;
        let ids: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        ids.iter()
            .filter_map(|id| load_row(c, id).transpose())
            .collect()
    })
}

pub fn set_enabled(db: &Db, id: &str, enabled: bool) -> Result<InstalledPlugin> {
    let changed = db.with(|c| {
        Ok(c.execute(
            "UPDATE plugins SET enabled = ?2 WHERE id = ?1",
            params![id, enabled],
        )?)
    })?;
    if changed == 0 {
        return Err(not_installed(id));
    }
    get(db, id)
}

/// Removes the plugin and its grants; its audit records stay. The component's file goes when
/// no other installed plugin shares it. A first-party plugin stays removed: later starts do not
/// install it again.
pub fn uninstall(db: &Db, plugins: &Plugins, id: &str) -> Result<()> {
    let sha = db.transaction(|tx| {
        let removed: Option<(String, bool)> = tx
            .query_row(
                "DELETE FROM plugins WHERE id = ?1 RETURNING component_sha256, first_party",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (sha, first_party) = removed.ok_or_else(|| not_installed(id))?;
        if first_party {
            tx.execute(
                "INSERT OR REPLACE INTO removed_first_party_plugins (id, removed_at) VALUES (?1, ?2)",
                params![id, now_ms()],
            )?;
        }
        Ok(sha)
    })?;
    remove_unused_component(db, plugins, &sha)
}

/// Deletes a component's file when no installed plugin uses it any more.
fn remove_unused_component(db: &Db, plugins: &Plugins, sha: &str) -> Result<()> {
    let used: bool = db.with(|c| {
        Ok(c.query_row(
            "SELECT EXISTS(SELECT 1 FROM plugins WHERE component_sha256 = ?1)",
            [sha],
            |r| r.get(0),
        )?)
    })?;
    if !used {
        plugins.remove_component(sha);
    }
    Ok(())
}

/// An enabled plugin ready to call, with its grants.
pub fn load(db: &Db, plugins: &Plugins, id: &str) -> Result<(Arc<Plugin>, Grants)> {
    let installed = get(db, id)?;
    if !installed.enabled {
        return Err(disabled(id));
    }
    let grants = installed.grants();
    Ok((plugins.compiled(&installed)?, grants))
}

fn disabled(id: &str) -> StudioError {
    StudioError::Invalid(format!(
        "plugin `{id}` is disabled; enable it first (`videosdgx plugins enable {id}`)"
    ))
}

/// The plugin of `world` to run: `wanted` when given (it must be of that world), else the only
/// enabled one, else the first-party default among several.
pub fn choose(db: &Db, world: World, wanted: Option<&str>) -> Result<String> {
    if let Some(id) = wanted {
        let plugin = get(db, id)?;
        if plugin.manifest.world != world {
            return Err(StudioError::Invalid(format!(
                "plugin `{id}` is a {}, not a {world}",
                plugin.world
            )));
        }
        if !plugin.enabled {
            return Err(disabled(id));
        }
        return Ok(plugin.id);
    }
    let enabled: Vec<InstalledPlugin> = list(db)?
        .into_iter()
        .filter(|p| p.enabled && p.manifest.world == world)
        .collect();
    let default = match world {
        World::Planner => "storyboard-planner",
        World::Expander => "prompt-expander",
        World::Stitcher => "shot-stitcher",
        World::Reviewer => "reviewer",
    };
    match enabled.as_slice() {
        [] => Err(StudioError::Invalid(format!(
            "no enabled {world} plugin is installed; install one (e.g. `{default}`) with `videosdgx plugins install`"
        ))),
        [only] => Ok(only.id.clone()),
        several => several
            .iter()
            .find(|p| p.id == default)
            .map(|p| p.id.clone())
            .ok_or_else(|| {
                StudioError::Invalid(format!(
                    "several {world} plugins are enabled ({}): name the one to use",
                    several
                        .iter()
                        .map(|p| p.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }),
    }
}

/// Writes one host call to the audit log.
pub fn record_audit(
    db: &Db,
    entry: &AuditEntry,
    job_id: Option<i64>,
    project_id: Option<i64>,
) -> Result<()> {
    let outcome = match (entry.allowed, &entry.error) {
        (false, _) => "denied",
        (true, Some(_)) => "error",
        (true, None) => "ok",
    };
    db.with(|c| {
        c.execute(
            "INSERT INTO audit_log (at, plugin_id, job_id, call, outcome, capability, detail, error, project_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                now_ms(),
                entry.plugin_id,
                job_id,
                entry.function,
                outcome,
                entry.capability.map(|c| c.as_str()),
                entry.detail,
                entry.error,
                project_id
            ],
        )?;
        Ok(())
    })
}

/// Audit records, newest first: of one plugin or all, at most `limit`.
pub fn audit(db: &Db, plugin_id: Option<&str>, limit: u32) -> Result<Vec<AuditRecord>> {
    db.with(|c| {
        let mut stmt = c.prepare(
            "SELECT id, at, plugin_id, job_id, project_id, call, outcome, capability, error, detail
             FROM audit_log WHERE ?1 IS NULL OR plugin_id = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![plugin_id, limit], |r| {
            let at: i64 = r.get(1)?;
            Ok(AuditRecord {
                id: r.get(0)?,
                at_ms: at,
                at: rfc3339(at),
                plugin_id: r.get(2)?,
                job_id: r.get(3)?,
                project_id: r.get(4)?,
                function: r.get(5)?,
                allowed: r.get::<_, String>(6)? != "denied",
                capability: r.get(7)?,
                error: r.get(8)?,
                detail: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    })
}

/// Content-addressed component files.
pub(super) fn component_path(dir: &Path, sha: &str) -> PathBuf {
    dir.join(format!("{sha}.wasm"))
}
