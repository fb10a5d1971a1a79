//! Step caching (TeaCache, MagCache, EasyCache) on the tiny Wan T2V pipeline against line-by-line
//! ports of the published references run in diffusers' `WanPipeline`
//! (tests/fixtures/make_step_cache_fixtures.py): 10 UniPC steps, guidance 5, fixed latents and
//! prompt embeddings, f32 on the CPU. Each method must compute and skip exactly the steps the
//! reference does, per guidance branch, and give the reference's cached video (which differs from
//! the uncached one by more than the tolerance, so a cache that recomputes or reuses the wrong
//! residual fails); EasyCache also on the tiny I2V pipeline. Also: the built-in Wan 2.1 tables
//! against the reference sources, a clear error where a checkpoint has no calibration, one cache
//! per Wan 2.2 expert, and guidance off.

use candle_core::{DType, Device, Tensor};
use std::ops::ControlFlow;
use std::path::PathBuf;
use videosdgx_engine::families::wan::WanPipeline;
use videosdgx_engine::pipelines::{GenerateInputs, GenerateParams, GeneratedVideo, ImageInput};
use videosdgx_engine::schedulers::step_cache::{
    BranchSteps, CacheMethod, CacheSpec, Calibration, Wan21Checkpoint,
};

/// Relative error allowed for a whole pipeline run in f32 (tests/fixtures/TOLERANCES.md).
const TOLERANCE: f64 = 1e-3;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn reference_dir() -> PathBuf {
    fixtures().join("tiny-wan-t2v/reference")
}

fn tensor(file: &str, key: &str) -> Tensor {
    let mut map = candle_core::safetensors::load(reference_dir().join(file), &Device::Cpu).unwrap();
    map.remove(key)
        .unwrap_or_else(|| panic!("{file} has no {key}"))
}

fn record() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(reference_dir().join("step_cache.json")).unwrap())
        .unwrap()
}

fn rel_err(out: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(out.dims(), reference.dims(), "shape");
    let sum = |t: Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    (sum((out - reference).unwrap()) / sum(reference.clone())).sqrt()
}

fn params(steps: usize, cache: Option<CacheSpec>) -> GenerateParams {
    GenerateParams {
        height: 32,
        width: 32,
        frames: 5,
        steps,
        guidance: 5.0,
        seed: 0,
        cache,
        ..Default::default()
    }
}

fn generate(dir: &str, params: &GenerateParams) -> anyhow::Result<GeneratedVideo> {
    let inputs = GenerateInputs {
        latents: Some(tensor("latents.safetensors", "latents")),
        prompt_embeds: Some(tensor("prompt_embeds.safetensors", "prompt_embeds")),
        negative_prompt_embeds: Some(tensor(
            "negative_prompt_embeds.safetensors",
            "negative_prompt_embeds",
        )),
        ..Default::default()
    };
    let mut pipeline = WanPipeline::load(&fixtures().join(dir), &Device::Cpu, DType::F32)?;
    pipeline.generate_with(params, inputs, &mut |_| ControlFlow::Continue(()))
}

fn steps(value: &serde_json::Value) -> BranchSteps {
    serde_json::from_value(value.clone()).unwrap()
}

/// Runs `method` at the fixture's threshold and checks decisions and video against the reference.
fn matches_reference(method: CacheMethod) {
    let record = record();
    let case = &record["cases"][method.name()];
    let spec = CacheSpec {
        method,
        threshold: case["threshold"].as_f64().unwrap(),
    };
    let n = record["steps"].as_u64().unwrap() as usize;
    let video = generate("tiny-wan-t2v", &params(n, Some(spec))).unwrap();
    let report = video.cache.expect("a cache report");
    assert_eq!((report.method, report.threshold), (method, spec.threshold));
    assert_eq!(report.computed, steps(&case["computed"]), "computed steps");
    assert_eq!(report.skipped, steps(&case["skipped"]), "skipped steps");
    assert!(!report.skipped.is_empty());

    let cached = tensor("step_cache_videos.safetensors", method.name());
    let uncached = tensor("step_cache_videos.safetensors", "no_cache");
    let err = rel_err(&video.frames, &cached);
    assert!(err <= TOLERANCE, "relative error {err:e}");
    let apart = rel_err(&uncached, &cached);
    assert!(
        apart > TOLERANCE && err < apart / 10.0,
        "the cached reference is {apart:e} from the uncached one, ours {err:e} from the cached"
    );
}

#[test]
fn teacache_skips_what_the_reference_skips() {
    matches_reference(CacheMethod::TeaCache);
}

#[test]
fn magcache_skips_what_the_reference_and_diffusers_hook_skip() {
    matches_reference(CacheMethod::MagCache);
    // diffusers' MagCacheConfig hook (one table for both branches) agreed on the cond branch.
    let record = record();
    assert_eq!(
        record["diffusers_magcache_cond_computed"],
        record["cases"]["magcache"]["computed"]["cond"]
    );
}

#[test]
fn easycache_skips_what_the_reference_skips() {
    matches_reference(CacheMethod::EasyCache);
}

/// I2V: the transformer takes the latents plus 8 condition channels; EasyCache's residual spans
/// the latents alone, as the reference's `x` before `y` is concatenated.
#[test]
fn easycache_on_image_to_video_skips_what_the_reference_skips() {
    let record = record();
    let case = &record["cases"]["easycache_i2v"];
    let dir = fixtures().join("tiny-wan-i2v");
    let mut stored =
        candle_core::safetensors::load(dir.join("reference/i2v.safetensors"), &Device::Cpu)
            .unwrap();
    let inputs = GenerateInputs {
        latents: stored.remove("latents"),
        prompt_embeds: stored.remove("prompt_embeds"),
        negative_prompt_embeds: stored.remove("negative_prompt_embeds"),
        ..Default::default()
    };
    let mut p = params(
        10,
        Some(CacheSpec {
            method: CacheMethod::EasyCache,
            threshold: case["threshold"].as_f64().unwrap(),
        }),
    );
    p.start_image = Some(ImageInput::Path(dir.join("reference/start.png")));
    let mut pipeline = WanPipeline::load(&dir, &Device::Cpu, DType::F32).unwrap();
    let video = pipeline
        .generate_with(&p, inputs, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    let report = video.cache.unwrap();
    assert_eq!(report.computed, steps(&case["computed"]), "computed steps");
    assert_eq!(report.skipped, steps(&case["skipped"]), "skipped steps");
    let cached = tensor("step_cache_videos.safetensors", "i2v_easycache");
    let uncached = tensor("step_cache_videos.safetensors", "i2v_no_cache");
    let err = rel_err(&video.frames, &cached);
    assert!(err <= TOLERANCE, "relative error {err:e}");
    let apart = rel_err(&uncached, &cached);
    assert!(
        apart > TOLERANCE && err < apart / 10.0,
        "{apart:e} apart, ours {err:e}"
    );
}

#[test]
fn without_a_cache_nothing_is_reported_and_the_video_is_the_uncached_one() {
    let video = generate("tiny-wan-t2v", &params(10, None)).unwrap();
    assert!(video.cache.is_none());
    let err = rel_err(
        &video.frames,
        &tensor("step_cache_videos.safetensors", "no_cache"),
    );
    assert!(err <= TOLERANCE, "relative error {err:e}");
}

#[test]
fn published_tables_match_the_reference_sources() {
    let text =
        std::fs::read_to_string(fixtures().join("schedulers/step_cache_tables.json")).unwrap();
    let tables: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (key, checkpoint) in [
        ("t2v-1.3b", Wan21Checkpoint::T2v1_3B),
        ("t2v-14b", Wan21Checkpoint::T2v14B),
        ("i2v-480p", Wan21Checkpoint::I2v14B480P),
        ("i2v-720p", Wan21Checkpoint::I2v14B720P),
    ] {
        let ours = Calibration::wan21(checkpoint);
        let expected = |table: &str| -> Vec<f64> {
            serde_json::from_value(tables[table][key].clone()).unwrap()
        };
        assert_eq!(ours.mag_ratios.unwrap(), expected("mag_ratios"), "{key}");
        assert_eq!(
            ours.teacache_coefficients.unwrap(),
            expected("teacache_coefficients"),
            "{key}"
        );
    }
}

#[test]
fn tea_and_mag_need_a_calibrated_checkpoint() {
    // The Wan 2.2 two-expert fixture has no step_cache.json and no published Wan 2.1 table.
    for method in [CacheMethod::TeaCache, CacheMethod::MagCache] {
        let err = generate(
            "tiny-wan22-two-experts",
            &params(4, Some(CacheSpec::new(method))),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("need a table calibrated for the checkpoint")
                && err.contains("step_cache.json"),
            "{err}"
        );
    }
}

#[test]
fn easycache_runs_each_wan22_expert_with_its_own_state() {
    let spec = CacheSpec {
        method: CacheMethod::EasyCache,
        threshold: 10.0,
    };
    let video = generate("tiny-wan22-two-experts", &params(10, Some(spec))).unwrap();
    let report = video.cache.unwrap();
    let mut all: Vec<usize> = [&report.computed.cond, &report.skipped.cond]
        .into_iter()
        .flatten()
        .copied()
        .collect();
    all.sort();
    assert_eq!(all, (0..10).collect::<Vec<_>>(), "every cond step once");
    assert_eq!(report.computed.len() + report.skipped.len(), 20);
    // Warm-up (steps 0-6) and the last step compute; with a huge threshold step 7 and 8 skip,
    // each reusing what its own expert stored.
    assert_eq!(report.skipped.cond, [7, 8]);
    assert_eq!(report.skipped.uncond, [7, 8]);
}

#[test]
fn without_guidance_only_the_cond_branch_is_cached() {
    let mut p = params(10, Some(CacheSpec::new(CacheMethod::MagCache)));
    p.guidance = 1.0;
    let report = generate("tiny-wan-t2v", &p).unwrap().cache.unwrap();
    assert!(report.computed.uncond.is_empty() && report.skipped.uncond.is_empty());
    assert_eq!(report.computed.len() + report.skipped.len(), 10);
    // One branch: int(10 * 0.2) = 2 calls, steps 0 and 1, always compute.
    assert_eq!(report.computed.cond[..2], [0, 1]);
    assert!(!report.skipped.cond.is_empty(), "{report:?}");
}
