//! The published configs the GPU benchmarks build with random weights: each preset's transformer,
//! VAE and UniPC scheduler, and the UMT5-XXL text encoder, as the Wan diffusers checkpoints ship
//! them. Only data: building and timing the models is the `gpu` module's.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))] // the GPU bench and the tests use them

use super::{FluxPreset, LlmPreset, Preset, WanShape};
use videosdgx_engine::families::flux::transformer::FluxTransformerConfig;
use videosdgx_engine::families::flux2::transformer::Flux2TransformerConfig;
use videosdgx_engine::families::flux2::vae::AutoencoderKLFlux2Config;
use videosdgx_engine::families::wan::transformer::WanTransformerConfig;
use videosdgx_engine::families::wan::vae::WanVaeConfig;
use videosdgx_engine::models::autoencoder_kl::AutoencoderKLConfig;
use videosdgx_engine::models::t5::T5Config;
use videosdgx_engine::text::config::RopeEntry;
use videosdgx_engine::text::gemma3::Gemma3TextConfig;
use videosdgx_engine::text::model::LanguageModelConfig;
use videosdgx_engine::text::qwen3::Qwen3Config;

/// The preset's published transformer config.
pub fn transformer_config(shape: &WanShape) -> WanTransformerConfig {
    WanTransformerConfig {
        patch_size: vec![1, 2, 2],
        num_attention_heads: shape.heads,
        attention_head_dim: shape.head_dim,
        in_channels: shape.in_channels,
        out_channels: Some(shape.in_channels),
        text_dim: 4096,
        freq_dim: 256,
        ffn_dim: shape.ffn_dim,
        num_layers: shape.layers,
        cross_attn_norm: true,
        qk_norm: Some("rms_norm_across_heads".into()),
        eps: 1e-6,
        ..WanTransformerConfig::default()
    }
}

/// UMT5-XXL as the Wan checkpoints ship it (`text_encoder/config.json`).
pub fn umt5_xxl() -> T5Config {
    T5Config {
        vocab_size: 256384,
        d_model: 4096,
        d_kv: 64,
        d_ff: 10240,
        num_layers: 24,
        num_heads: 64,
        relative_attention_num_buckets: 32,
        relative_attention_max_distance: 128,
        layer_norm_epsilon: 1e-6,
        feed_forward_proj: "gated-gelu".into(),
        model_type: "umt5".into(),
    }
}

/// What a preset's pipeline directory adds to its transformer.
pub struct PipelineSettings {
    /// `vae/config.json` (latents_mean/std 0 and 1: random weights have no scale to undo).
    pub vae: WanVaeConfig,
    /// `flow_shift` of the scheduler config.
    pub flow_shift: f64,
    /// `expand_timesteps` of `model_index.json` (Wan 2.2 TI2V).
    pub expand_timesteps: bool,
}

pub fn pipeline_settings(preset: Preset) -> anyhow::Result<PipelineSettings> {
    Ok(match preset {
        // Wan 2.1 T2V 1.3B and 14B at 480p.
        Preset::Wan21_1_3b | Preset::Wan21_14b => PipelineSettings {
            vae: serde_json::from_value(serde_json::json!({
                "z_dim": 16, "latents_mean": vec![0.0; 16], "latents_std": vec![1.0; 16],
            }))?,
            flow_shift: 3.0,
            expand_timesteps: false,
        },
        // Wan2.2-TI2V-5B: the high-compression VAE (16x spatially with its 2x2 patch).
        Preset::Wan22_5b => PipelineSettings {
            vae: serde_json::from_value(serde_json::json!({
                "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4],
                "num_res_blocks": 2, "attn_scales": [], "temperal_downsample": [false, true, true],
                "is_residual": true, "in_channels": 12, "out_channels": 12, "patch_size": 2,
                "scale_factor_spatial": 16, "scale_factor_temporal": 4,
                "latents_mean": vec![0.0; 48], "latents_std": vec![1.0; 48],
            }))?,
            flow_shift: 5.0,
            expand_timesteps: true,
        },
    })
}

/// `UniPCMultistepScheduler` as the Wan diffusers checkpoints configure it.
pub fn unipc_config(flow_shift: f64) -> serde_json::Value {
    serde_json::json!({
        "_class_name": "UniPCMultistepScheduler",
        "num_train_timesteps": 1000,
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": true,
        "flow_shift": flow_shift,
        "solver_order": 2,
        "solver_type": "bh2",
        "predict_x0": true,
        "lower_order_final": true,
        "final_sigmas_type": "zero",
        "timestep_spacing": "linspace",
        "disable_corrector": [],
        "thresholding": false,
        "steps_offset": 0,
    })
}

/// The published language model configs (`config.json` of Qwen/Qwen3-4B and -8B, and the
/// `text_config` of google/gemma-3-4b-it and -12b-it).
pub fn llm_config(preset: LlmPreset) -> LanguageModelConfig {
    let qwen3 = |hidden_size, intermediate_size, tie_word_embeddings| {
        LanguageModelConfig::Qwen3(Qwen3Config {
            vocab_size: 151_936,
            hidden_size,
            intermediate_size,
            num_hidden_layers: 36,
            num_attention_heads: 32,
            num_key_value_heads: Some(8),
            head_dim: 128,
            rope_theta: Some(1_000_000.0),
            tie_word_embeddings,
            ..Qwen3Config::default()
        })
    };
    let gemma3 = |hidden_size,
                  intermediate_size,
                  num_hidden_layers,
                  num_attention_heads,
                  num_key_value_heads| {
        LanguageModelConfig::Gemma3Text(Gemma3TextConfig {
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: 256,
            sliding_window: Some(1024),
            rope_theta: Some(1_000_000.0),
            rope_local_base_freq: Some(10_000.0),
            rope_scaling: Some(RopeEntry {
                rope_type: Some("linear".into()),
                rope_theta: None,
                factor: Some(8.0),
            }),
            ..Gemma3TextConfig::default()
        })
    };
    match preset {
        LlmPreset::Qwen3_4b => qwen3(2560, 9728, true),
        LlmPreset::Qwen3_8b => qwen3(4096, 12_288, false),
        LlmPreset::Gemma3_4b => gemma3(2560, 10_240, 34, 8, 4),
        LlmPreset::Gemma3_12b => gemma3(3840, 15_360, 48, 16, 8),
    }
}

/// A FLUX.2 preset's published `transformer/config.json`; `None` for FLUX.1.
pub fn flux2_transformer(preset: FluxPreset) -> Option<Flux2TransformerConfig> {
    match preset {
        FluxPreset::Flux2Klein4b => Some(Flux2TransformerConfig {
            num_layers: 5,
            num_single_layers: 20,
            num_attention_heads: 24,
            joint_attention_dim: 7680,
            guidance_embeds: false,
            ..Flux2TransformerConfig::default()
        }),
        FluxPreset::Flux2Dev => Some(Flux2TransformerConfig::default()),
        FluxPreset::Flux1Dev | FluxPreset::Flux1Schnell => None,
    }
}

/// A FLUX.1 preset's published `transformer/config.json` (the reference's defaults are [dev]'s).
pub fn flux1_transformer(preset: FluxPreset) -> FluxTransformerConfig {
    FluxTransformerConfig {
        guidance_embeds: preset != FluxPreset::Flux1Schnell,
        ..FluxTransformerConfig::default()
    }
}

/// FLUX.1's VAE (`vae/config.json` of black-forest-labs/FLUX.1-dev).
pub fn flux1_vae() -> AutoencoderKLConfig {
    AutoencoderKLConfig {
        block_out_channels: vec![128, 256, 512, 512],
        down_block_types: vec!["DownEncoderBlock2D".into(); 4],
        up_block_types: vec!["UpDecoderBlock2D".into(); 4],
        layers_per_block: 2,
        latent_channels: 16,
        scaling_factor: 0.3611,
        shift_factor: Some(0.1159),
        use_quant_conv: false,
        use_post_quant_conv: false,
        ..AutoencoderKLConfig::default()
    }
}

/// The FLUX.2 VAE (`vae/config.json`, the reference's defaults).
pub fn flux2_vae() -> AutoencoderKLFlux2Config {
    AutoencoderKLFlux2Config::default()
}

/// `scheduler/scheduler_config.json` of the FLUX.2 pipelines.
pub fn flux2_scheduler() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": true,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
        "time_shift_type": "exponential"
    })
}

/// LTX-2 19B as `Lightricks/LTX-2` ships it in the diffusers layout: each component's
/// `config.json` and the scheduler's, from kernels/bench/ltx2_19b.json (which the reference
/// benchmark reads too).
pub struct Ltx2Configs {
    pub transformer: serde_json::Value,
    pub connectors: serde_json::Value,
    pub vae: serde_json::Value,
    pub audio_vae: serde_json::Value,
    pub vocoder: serde_json::Value,
    pub scheduler: serde_json::Value,
}

pub fn ltx2_19b() -> Ltx2Configs {
    let mut configs: serde_json::Value =
        serde_json::from_str(include_str!("../../../../../kernels/bench/ltx2_19b.json"))
            .expect("kernels/bench/ltx2_19b.json is JSON");
    let mut take = |name: &str| configs[name].take();
    Ltx2Configs {
        transformer: take("transformer"),
        connectors: take("connectors"),
        vae: take("vae"),
        audio_vae: take("audio_vae"),
        vocoder: take("vocoder"),
        scheduler: take("scheduler"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::bench::token_grid;
    use videosdgx_engine::schedulers::Scheduler;

    #[test]
    fn bench_unipc_schedules_like_the_wan_checkpoint_config() {
        // tests/fixtures/tiny-wan-t2v ships the scheduler config of the Wan 2.1 diffusers checkpoints.
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tiny-wan-t2v/scheduler");
        let mut ours = Scheduler::from_config(&unipc_config(3.0), None, None).unwrap();
        let mut wan = Scheduler::load(&fixture, None, None).unwrap();
        ours.set_timesteps(50).unwrap();
        wan.set_timesteps(50).unwrap();
        assert_eq!(ours.timesteps(), wan.timesteps());
        assert_eq!(ours.sigmas(), wan.sigmas());
    }

    #[test]
    fn each_preset_vae_fits_its_transformer_and_token_grid() {
        for preset in [Preset::Wan21_1_3b, Preset::Wan21_14b, Preset::Wan22_5b] {
            let shape = preset.shape();
            let PipelineSettings {
                vae,
                expand_timesteps,
                ..
            } = pipeline_settings(preset).unwrap();
            assert_eq!(vae.z_dim, shape.in_channels, "{preset:?}");
            assert_eq!(vae.spatial_scale(), shape.vae_stride, "{preset:?}");
            assert_eq!(vae.temporal_scale(), 4, "{preset:?}");
            assert_eq!(vae.image_channels(), 3, "{preset:?}");
            assert_eq!(expand_timesteps, preset == Preset::Wan22_5b);
            let (f, h, w) = token_grid(&shape, 480, 832, 81).unwrap();
            assert_eq!(
                (f, h * 2, w * 2),
                (21, 480 / shape.vae_stride, 832 / shape.vae_stride)
            );
        }
    }

    #[test]
    fn the_ltx2_configs_build_the_engine_configs_and_fit_together() {
        use videosdgx_engine::families::ltx2::transformer::LTX2TransformerConfig;
        use videosdgx_engine::families::ltx2::video_vae::AutoencoderKLLTX2VideoConfig;
        let configs = ltx2_19b();
        let transformer: LTX2TransformerConfig =
            serde_json::from_value(configs.transformer).unwrap();
        let vae: AutoencoderKLLTX2VideoConfig = serde_json::from_value(configs.vae).unwrap();
        assert_eq!(transformer.in_channels, vae.latent_channels);
        assert_eq!(
            (
                vae.spatial_compression_ratio(),
                vae.temporal_compression_ratio()
            ),
            (32, 8)
        );
        assert_eq!(transformer.num_layers, 48);
        videosdgx_engine::schedulers::FlowMatchEulerDiscrete::from_config(&configs.scheduler, None)
            .unwrap();
    }
}
