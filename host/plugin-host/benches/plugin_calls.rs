//! Plugin overheads: compiling a component (cold), loading it from the compiled cache,
//! a call into a pre-instantiated plugin (store + instance + call), and one host import
//! round trip inside a call. Figures go to docs/PERFORMANCE.md ("Plugins").

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{Criterion, criterion_group, criterion_main};
use std::sync::Arc;
use support::{MemoryServices, context, guests, input};
use videosdgx_plugin_host::{Capability, Grants, Limits, Manifest, PluginRuntime};

fn benches(c: &mut Criterion) {
    let wasm = guests::component("hostile");
    let manifest = Manifest::parse(&guests::manifest_text("hostile")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let uncached = PluginRuntime::new(None).unwrap();
    c.bench_function("compile component (cold, no cache)", |b| {
        b.iter(|| uncached.load(manifest.clone(), &wasm).unwrap())
    });

    let cache = tempfile::tempdir().unwrap();
    let cached = PluginRuntime::new(Some(cache.path())).unwrap();
    cached.load(manifest.clone(), &wasm).unwrap();
    c.bench_function("load component (compiled cache)", |b| {
        b.iter(|| cached.load(manifest.clone(), &wasm).unwrap())
    });

    let plugin = cached.load(manifest.clone(), &wasm).unwrap();
    let grants = Grants::new([Capability::TextGeneration]);
    let services = Arc::new(MemoryServices {
        text_reply: Some("ok".into()),
        ..MemoryServices::default()
    });
    let ctx = context(services.clone(), grants, Limits::default());
    let echo = input("echo");
    c.bench_function("call pre-instantiated plugin (instantiate + call)", |b| {
        b.iter(|| rt.block_on(cached.plan(&plugin, &ctx, &echo)).unwrap())
    });

    // slow-host makes four text.complete host calls; the difference to `echo` is four
    // host-import round trips (grant check, audit, clock accounting, lifting, lowering).
    let host_calls = input("slow-host");
    c.bench_function("call with four host imports", |b| {
        b.iter(|| {
            services.audit.lock().unwrap().clear();
            rt.block_on(cached.plan(&plugin, &ctx, &host_calls))
                .unwrap()
        })
    });
}

criterion_group! {
    name = plugin_calls;
    config = Criterion::default().sample_size(20);
    targets = benches
}
criterion_main!(plugin_calls);
