//! Fuzz targets for every parser of untrusted input: what checkpoints bring (safetensors headers
//! and shard indexes, model and scheduler configs), plugin manifests, screenplays, uploaded media
//! (PNG, JPEG, WebP, GIF, MP4, WAV and the other sniffed formats), the MP4 reader, every JSON
//! request body, and whole requests (JSON and multipart) through the studio's router.
//!
//! `cargo test -p videosdgx --test fuzz` is the bounded run CI does (a seeded 2000 mutated
//! inputs per target after its corpus); docs/RELIABILITY.md ("Fuzzing") says how to run long.

mod driver;
mod engine;
mod plugins;
mod studio;

use driver::Target;

#[global_allocator]
static ALLOCATOR: driver::CountingAlloc = driver::CountingAlloc;

const TARGETS: &[Target] = &[
    Target {
        name: "safetensors",
        setup: engine::safetensors,
        dictionary: engine::JSON_TOKENS,
    },
    Target {
        name: "safetensors_index",
        setup: engine::safetensors_index,
        dictionary: engine::JSON_TOKENS,
    },
    Target {
        name: "model_config",
        setup: engine::model_config,
        dictionary: engine::JSON_TOKENS,
    },
    Target {
        name: "lora",
        setup: engine::lora,
        dictionary: engine::JSON_TOKENS,
    },
    Target {
        name: "scheduler_config",
        setup: engine::scheduler_config,
        dictionary: engine::JSON_TOKENS,
    },
    Target {
        name: "mp4",
        setup: engine::mp4,
        dictionary: studio::MEDIA_TOKENS,
    },
    Target {
        name: "plugin_manifest",
        setup: plugins::manifest,
        dictionary: plugins::TOML_TOKENS,
    },
    Target {
        name: "screenplay",
        setup: plugins::screenplay,
        dictionary: plugins::SCREENPLAY_TOKENS,
    },
    Target {
        name: "media",
        setup: studio::media,
        dictionary: studio::MEDIA_TOKENS,
    },
    Target {
        name: "api_bodies",
        setup: studio::api_bodies,
        dictionary: engine::JSON_TOKENS,
    },
    Target {
        name: "api_routes",
        setup: studio::router,
        dictionary: studio::HTTP_TOKENS,
    },
    Target {
        name: "multipart",
        setup: studio::router,
        dictionary: studio::HTTP_TOKENS,
    },
];

fn main() {
    std::process::exit(driver::main(TARGETS));
}
