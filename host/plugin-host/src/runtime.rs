//! The plugin runtime: one wasmtime engine (Cranelift, component model, async, fuel, epoch
//! interruption), a disk cache of compiled components, component checks against the
//! manifest, and the calls into plugins, each in a fresh store with its own limits and a
//! fresh instance from a pool of pre-mapped slots. A call that traps or breaches a limit ends
//! with a [`CallError`]; the runtime and every other plugin carry on.

use crate::capability::Grants;
use crate::error::{CallError, LoadError};
use crate::limits::{GuestTimeExceeded, Limits, MAX_TABLE_ELEMENTS};
use crate::manifest::{Manifest, World};
use crate::services::HostServices;
use crate::state::PluginState;
use crate::types::{
    GeneratedClip, ModelProfile, PlanInput, Shot, ShotPrompt, StitchResult, Storyboard, Take,
    TakeReview,
};
use crate::wit::{Bound, Linkers};
use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap,
    UpdateDeadline,
};

/// Core instances, memories and tables one plugin's component may hold (a Rust guest has its
/// module plus the WASI adapter's few shims; room is left for composed components). Each
/// memory slot reserves 4 GiB of address space (not memory): the pool reserves about 0.5 TiB.
const CORE_INSTANCES_PER_CALL: u32 = 16;
const MEMORIES_PER_CALL: u32 = 2;
const TABLES_PER_CALL: u32 = 8;
/// Most of a linear memory, and of a table, that a finished call's slot keeps mapped (only
/// pages a call touched are resident at all).
const KEEP_RESIDENT_MEMORY: usize = 16 << 20;
const KEEP_RESIDENT_TABLE: usize = 1 << 20;
/// How often the epoch advances: the granularity of time budgets.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Native stack a plugin may use; deeper recursion traps.
const MAX_WASM_STACK: usize = 512 << 10;
const PACKAGE: &str = "videosdgx:plugin/";

/// Everything a call needs besides the plugin: who serves its imports, what it may do.
#[derive(Clone)]
pub struct CallContext {
    pub services: Arc<dyn HostServices>,
    pub grants: Grants,
    pub limits: Limits,
}

/// A checked, compiled plugin ready to be called (pre-instantiated: each call only creates
/// a store and an instance).
pub struct Plugin {
    manifest: Manifest,
    bound: Bound,
}

impl Plugin {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

pub struct PluginRuntime {
    engine: Engine,
    linkers: Linkers,
    cache_dir: Option<PathBuf>,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl PluginRuntime {
    /// Plugin calls that may run at once; one more is refused with [`CallError::Busy`].
    pub const MAX_CONCURRENT_CALLS: u32 = 64;

    /// A runtime whose compiled components are cached in `cache_dir` (none when `None`).
    pub fn new(cache_dir: Option<&Path>) -> anyhow::Result<PluginRuntime> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(MAX_WASM_STACK)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool()));
        let engine = Engine::new(&config)?;
        let linkers = Linkers::new(&engine)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_ticker(&engine, ticker_stop.clone());
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("creating the plugin cache {}: {e}", dir.display()))?;
        }
        Ok(PluginRuntime {
            engine,
            linkers,
            cache_dir: cache_dir.map(Path::to_path_buf),
            ticker_stop,
        })
    }

    /// Compiles (or loads from the cache), checks the component against its manifest and
    /// pre-links it.
    pub fn load(&self, manifest: Manifest, wasm: &[u8]) -> Result<Plugin, LoadError> {
        let component = self.compile(wasm)?;
        check_component(&self.engine, &component, &manifest)?;
        let bound = self
            .linkers
            .bind(manifest.api(), manifest.world, &component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        Ok(Plugin { manifest, bound })
    }

    /// The compiled component, from the disk cache when this exact component was compiled
    /// before by this wasmtime version with this configuration.
    fn compile(&self, wasm: &[u8]) -> Result<Component, LoadError> {
        if !wasm.starts_with(b"\0asm") || wasm.get(4..8) != Some(&[0x0d, 0x00, 0x01, 0x00]) {
            return Err(LoadError::NotAComponent(
                "it does not start with the component-model header (a core module? build with --target wasm32-wasip2)"
                    .into(),
            ));
        }
        let Some(dir) = &self.cache_dir else {
            return Component::new(&self.engine, wasm)
                .map_err(|e| LoadError::NotAComponent(format!("{e:#}")));
        };
        let path = dir.join(format!("{}.cwasm", self.cache_key(wasm)));
        if path.exists() {
            // SAFETY: cache entries are written only by `compile` below, named by the hash of
            // their source and of this engine's compatibility; a stale or damaged entry is
            // detected by wasmtime's header check and recompiled.
            if let Ok(component) = unsafe { Component::deserialize_file(&self.engine, &path) } {
                return Ok(component);
            }
        }
        let component = Component::new(&self.engine, wasm)
            .map_err(|e| LoadError::NotAComponent(format!("{e:#}")))?;
        let cache_err = |e: &dyn std::fmt::Display| LoadError::Cache {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let bytes = component.serialize().map_err(|e| cache_err(&e))?;
        let partial = path.with_extension("partial");
        std::fs::write(&partial, bytes).map_err(|e| cache_err(&e))?;
        std::fs::rename(&partial, &path).map_err(|e| cache_err(&e))?;
        Ok(component)
    }

    fn cache_key(&self, wasm: &[u8]) -> String {
        let mut engine_hash = std::hash::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut engine_hash);
        let digest = Sha256::digest(wasm);
        format!(
            "{}-{:016x}",
            hex::encode(&digest[..16]),
            engine_hash.finish()
        )
    }

    pub async fn plan(
        &self,
        plugin: &Plugin,
        ctx: &CallContext,
        input: &PlanInput,
    ) -> Result<Storyboard, CallError> {
        self.require(plugin, World::Planner)?;
        let mut store = self.store(plugin, ctx);
        let result = plugin.bound.plan(&mut store, input).await;
        outcome(plugin, &store, result)
    }

    pub async fn expand(
        &self,
        plugin: &Plugin,
        ctx: &CallContext,
        shot: &Shot,
        storyboard: &Storyboard,
        model: &ModelProfile,
    ) -> Result<ShotPrompt, CallError> {
        self.require(plugin, World::Expander)?;
        let mut store = self.store(plugin, ctx);
        let result = plugin
            .bound
            .expand(&mut store, shot, storyboard, model)
            .await;
        outcome(plugin, &store, result)
    }

    pub async fn stitch(
        &self,
        plugin: &Plugin,
        ctx: &CallContext,
        storyboard: &Storyboard,
        clips: &[GeneratedClip],
        output_name: &str,
    ) -> Result<StitchResult, CallError> {
        self.require(plugin, World::Stitcher)?;
        let mut store = self.store(plugin, ctx);
        let result = plugin
            .bound
            .stitch(&mut store, storyboard, clips, output_name)
            .await;
        outcome(plugin, &store, result)
    }

    pub async fn review(
        &self,
        plugin: &Plugin,
        ctx: &CallContext,
        shot: &Shot,
        prompt: &ShotPrompt,
        take: &Take,
        storyboard: &Storyboard,
    ) -> Result<TakeReview, CallError> {
        self.require(plugin, World::Reviewer)?;
        let mut store = self.store(plugin, ctx);
        let result = plugin
            .bound
            .review(&mut store, shot, prompt, take, storyboard)
            .await;
        let review = outcome(plugin, &store, result)?;
        check_review(&review).map_err(|message| CallError::BadOutput {
            plugin: plugin.manifest.id.clone(),
            message,
        })?;
        Ok(review)
    }

    fn require(&self, plugin: &Plugin, wanted: World) -> Result<(), CallError> {
        if plugin.manifest.world != wanted {
            return Err(CallError::WrongWorld {
                plugin: plugin.manifest.id.clone(),
                actual: plugin.manifest.world,
                wanted,
            });
        }
        Ok(())
    }

    /// A fresh store per call: its own memory cap, fuel, and guest-time deadline.
    fn store(&self, plugin: &Plugin, ctx: &CallContext) -> Store<PluginState> {
        let state = PluginState::new(
            &plugin.manifest.id,
            ctx.grants.clone(),
            ctx.services.clone(),
            ctx.limits,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store
            .set_fuel(ctx.limits.fuel)
            .expect("fuel is enabled in the engine config");
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            let state = ctx.data();
            let budget = state.limits().guest_time;
            if state.clock.guest_time() > budget {
                return Err(GuestTimeExceeded(budget).into());
            }
            // Yield so other plugins' calls on this executor make progress.
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }
}

/// Longest reasons or revised prompt a review may hold: a review is read by people and becomes
/// a prompt, so anything longer is a broken or hostile reviewer.
pub const MAX_REVIEW_TEXT_BYTES: usize = 16 << 10;

fn check_review(review: &TakeReview) -> Result<(), String> {
    if !(0.0..=1.0).contains(&review.score) {
        return Err(format!("score {} is not between 0 and 1", review.score));
    }
    let texts = [
        ("reasons", Some(&review.reasons)),
        ("revised-prompt", review.revised_prompt.as_ref()),
        (
            "revised-negative-prompt",
            review.revised_negative_prompt.as_ref(),
        ),
    ];
    for (field, text) in texts {
        if let Some(text) = text
            && text.len() > MAX_REVIEW_TEXT_BYTES
        {
            return Err(format!(
                "{field} is {} bytes; a review holds at most {MAX_REVIEW_TEXT_BYTES}",
                text.len()
            ));
        }
    }
    Ok(())
}

/// The pooling instance allocator: every call still gets a fresh instance in a fresh store
/// (memory and tables are reset to the component's initial image between calls), but from
/// slots mapped once, instead of mapping and unmapping memory, tables and the async stack on
/// every call. Each slot may grow to wasm32's 4 GiB; the per-call [`Limits`] cap what a call
/// actually uses.
fn pool() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(PluginRuntime::MAX_CONCURRENT_CALLS)
        .total_stacks(PluginRuntime::MAX_CONCURRENT_CALLS)
        .total_core_instances(PluginRuntime::MAX_CONCURRENT_CALLS * CORE_INSTANCES_PER_CALL)
        .total_memories(PluginRuntime::MAX_CONCURRENT_CALLS * MEMORIES_PER_CALL)
        .total_tables(PluginRuntime::MAX_CONCURRENT_CALLS * TABLES_PER_CALL)
        .max_core_instances_per_component(CORE_INSTANCES_PER_CALL)
        .max_memories_per_component(MEMORIES_PER_CALL)
        .max_tables_per_component(TABLES_PER_CALL)
        .table_elements(MAX_TABLE_ELEMENTS);
    // With the kernel's PAGEMAP_SCAN (Linux 6.7+), a finished call's slot is reset by
    // rewriting only the pages it dirtied, which stay mapped: the next call takes no page
    // faults and no `madvise`. Without it, resetting by `memset` would touch every kept byte,
    // so memory is handed back to the kernel instead.
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        pool.pagemap_scan(Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(KEEP_RESIDENT_TABLE);
    }
    pool
}

/// Turns the raw result of a call into the user-facing outcome.
fn outcome<T>(
    plugin: &Plugin,
    store: &Store<PluginState>,
    result: wasmtime::Result<Result<T, crate::PluginError>>,
) -> Result<T, CallError> {
    let id = plugin.manifest.id.clone();
    let state = store.data();
    let err = match result {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(error)) => return Err(CallError::Plugin { plugin: id, error }),
        Err(err) => err,
    };
    if let Some(wanted) = state.limiter.refused {
        return Err(CallError::MemoryLimit {
            plugin: id,
            limit_mib: state.limits().memory_bytes >> 20,
            wanted_mib: wanted >> 20,
        });
    }
    let pool_full = err
        .chain()
        .any(|e| e.is::<wasmtime::PoolConcurrencyLimitError>());
    if pool_full {
        return Err(CallError::Busy {
            plugin: id,
            running: PluginRuntime::MAX_CONCURRENT_CALLS,
        });
    }
    if let Some(exceeded) = err.downcast_ref::<GuestTimeExceeded>() {
        return Err(CallError::Timeout {
            plugin: id,
            budget: exceeded.0,
        });
    }
    let mut message = match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => {
            return Err(CallError::OutOfFuel {
                plugin: id,
                fuel: state.limits().fuel,
            });
        }
        Some(Trap::StackOverflow) => return Err(CallError::StackOverflow { plugin: id }),
        // The trap itself, without the wasm backtrace wasmtime attaches as context.
        Some(trap) => trap.to_string(),
        None => format!("{err:#}"),
    };
    let stderr = state.stderr.contents();
    if !stderr.is_empty() {
        message.push_str(&format!(
            "; plugin stderr: {}",
            String::from_utf8_lossy(&stderr).trim()
        ));
    }
    Err(CallError::Crashed {
        plugin: id,
        message,
    })
}

/// Checks that the component is what its manifest says: it exports the world's interface
/// at the manifest's API version and imports only what this host provides.
fn check_component(
    engine: &Engine,
    component: &Component,
    manifest: &Manifest,
) -> Result<(), LoadError> {
    let ty = component.component_type();
    let version = manifest.api_version.to_string();
    let wanted = format!("{PACKAGE}{}@{version}", manifest.world.export_interface());
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    if !exports.contains(&wanted) {
        let found = exports
            .iter()
            .filter_map(|name| {
                let world = World::ALL.into_iter().find(|w| {
                    name.strip_prefix(PACKAGE)
                        .is_some_and(|rest| rest.split('@').next() == Some(w.export_interface()))
                })?;
                Some(format!("`{name}` (a {world})"))
            })
            .collect::<Vec<_>>();
        let found = if found.is_empty() {
            "no VideosDGX plugin interface".to_string()
        } else {
            found.join(", ")
        };
        return Err(LoadError::Mismatch(format!(
            "plugin.toml says world `{}` at API {version}, so the component must export `{wanted}`, but it exports {found}",
            manifest.world
        )));
    }
    for (name, item) in ty.imports(engine) {
        if let Some(rest) = name.strip_prefix(PACKAGE) {
            let (interface, import_version) = rest.split_once('@').unwrap_or((rest, ""));
            if import_version != version {
                return Err(LoadError::Mismatch(format!(
                    "plugin.toml says API {version} but the component imports `{name}`"
                )));
            }
            if !matches!(item.ty, ComponentItem::ComponentInstance(_))
                || !crate::wit::imports(manifest.api()).contains(&interface)
            {
                return Err(LoadError::UnsupportedImport(format!(
                    "`{name}` is not part of API {version}"
                )));
            }
        } else if !name.starts_with("wasi:") {
            return Err(LoadError::UnsupportedImport(format!("`{name}`")));
        }
    }
    Ok(())
}

/// Advances the engine's epoch every tick until the runtime is dropped.
fn spawn_ticker(engine: &Engine, stop: Arc<AtomicBool>) {
    let engine = engine.weak();
    std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .expect("spawning the epoch ticker thread");
}

impl std::fmt::Debug for PluginRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRuntime")
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}
