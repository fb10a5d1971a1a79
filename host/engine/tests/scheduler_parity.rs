//! UniPC (flow sigmas) and flow-matching Euler against diffusers: timesteps, sigmas and every
//! intermediate sample of a multi-step run on random model outputs (tests/fixtures/schedulers).

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use videosdgx_engine::schedulers::{Scheduler, SchedulerKind};

/// Relative error allowed per intermediate sample in f32 (tests/fixtures/TOLERANCES.md).
const TOLERANCE: f64 = 1e-5;

fn fixture(name: &str) -> (PathBuf, HashMap<String, Tensor>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/schedulers")
        .join(name);
    let tensors =
        candle_core::safetensors::load(dir.join("steps.safetensors"), &Device::Cpu).unwrap();
    (dir, tensors)
}

fn rel_err(out: &Tensor, reference: &Tensor) -> f64 {
    let diff = (out - reference)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let norm = reference
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (diff as f64 / norm as f64).sqrt()
}

fn check(name: &str) {
    let (dir, t) = fixture(name);
    let mut scheduler = Scheduler::load(&dir, None, None).unwrap();
    let want_timesteps = t["timesteps"].to_vec1::<f64>().unwrap();
    scheduler.set_timesteps(want_timesteps.len()).unwrap();
    assert_eq!(
        scheduler.timesteps(),
        want_timesteps.as_slice(),
        "{name} timesteps"
    );
    assert_eq!(
        scheduler.sigmas(),
        t["sigmas"].to_vec1::<f64>().unwrap().as_slice(),
        "{name} sigmas"
    );
    let mut sample = t["sample_0"].clone();
    for i in 0..want_timesteps.len() {
        sample = scheduler
            .step(&t[&format!("model_output_{i}")], &sample)
            .unwrap();
        let err = rel_err(&sample, &t[&format!("sample_{}", i + 1)]);
        assert!(err <= TOLERANCE, "{name} step {i}: relative error {err:e}");
    }
}

#[test]
fn unipc_with_wan_defaults_matches_diffusers() {
    check("unipc_wan_shift3");
}

#[test]
fn unipc_with_shift_5_and_4_steps_matches_diffusers() {
    check("unipc_shift5_4steps");
}

#[test]
fn unipc_third_order_bh1_matches_diffusers() {
    check("unipc_order3_bh1");
}

#[test]
fn unipc_without_lower_order_final_and_a_disabled_corrector_matches_diffusers() {
    check("unipc_no_lower_order_final");
}

#[test]
fn flow_euler_matches_diffusers() {
    check("flow_euler_shift3");
}

#[test]
fn flow_euler_with_shift_5_and_4_steps_matches_diffusers() {
    check("flow_euler_shift5_4steps");
}

#[test]
fn flow_shift_override_reaches_the_schedule() {
    let (dir, _) = fixture("unipc_wan_shift3");
    let mut shift3 = Scheduler::load(&dir, None, None).unwrap();
    let mut shift5 = Scheduler::load(&dir, None, Some(5.0)).unwrap();
    shift3.set_timesteps(4).unwrap();
    shift5.set_timesteps(4).unwrap();
    let (_, reference) = fixture("unipc_shift5_4steps");
    assert_eq!(
        shift5.sigmas(),
        reference["sigmas"].to_vec1::<f64>().unwrap().as_slice()
    );
    assert_ne!(shift3.sigmas(), shift5.sigmas());
}

#[test]
fn scheduler_override_swaps_the_class_and_keeps_the_shift() {
    let (dir, _) = fixture("unipc_shift5_4steps");
    let mut euler = Scheduler::load(&dir, Some(SchedulerKind::FlowEuler), None).unwrap();
    euler.set_timesteps(4).unwrap();
    let (_, reference) = fixture("flow_euler_shift5_4steps");
    assert!(matches!(euler, Scheduler::FlowEuler(_)));
    assert_eq!(
        euler.sigmas(),
        reference["sigmas"].to_vec1::<f64>().unwrap().as_slice()
    );
}

#[test]
fn unsupported_scheduler_configs_are_refused_by_name() {
    let karras = serde_json::json!({"_class_name": "UniPCMultistepScheduler", "use_flow_sigmas": true,
        "prediction_type": "flow_prediction", "use_karras_sigmas": true});
    let err = Scheduler::from_config(&karras, None, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("use_karras_sigmas"), "{err}");
    let ddim = serde_json::json!({"_class_name": "DDIMScheduler"});
    let err = Scheduler::from_config(&ddim, None, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("DDIMScheduler"), "{err}");
}

#[test]
fn the_step_distilled_schedule_matches_lightx2v() {
    let (dir, t) = fixture("step_distill_4step");
    let mut scheduler = Scheduler::load(&dir, None, None).unwrap();
    scheduler.set_timestep_list(&[1000, 750, 500, 250]).unwrap();
    let close = |ours: &[f64], theirs: Vec<f64>, what: &str| {
        assert_eq!(ours.len(), theirs.len(), "{what}");
        for (a, b) in ours.iter().zip(&theirs) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{what}: {ours:?} vs {theirs:?}"
            );
        }
    };
    close(
        scheduler.timesteps(),
        t["timesteps"].to_vec1().unwrap(),
        "timesteps",
    );
    close(scheduler.sigmas(), t["sigmas"].to_vec1().unwrap(), "sigmas");
    let mut sample = t["sample_0"].clone();
    for i in 0..4 {
        sample = scheduler
            .step(&t[&format!("model_output_{i}")], &sample)
            .unwrap();
        let err = rel_err(&sample, &t[&format!("sample_{}", i + 1)]);
        assert!(err <= TOLERANCE, "step {i}: relative error {err:e}");
    }
}

#[test]
fn bad_timestep_lists_are_refused_and_unipc_takes_none() {
    let (dir, _) = fixture("step_distill_4step");
    let mut euler = Scheduler::load(&dir, None, None).unwrap();
    for (list, why) in [
        (&[][..], "empty"),
        (&[1000, 1000][..], "fall strictly"),
        (&[250, 500][..], "fall strictly"),
        (&[1001, 500][..], "outside 1..=1000"),
        (&[500, 0][..], "outside 1..=1000"),
    ] {
        let err = euler.set_timestep_list(list).unwrap_err().to_string();
        assert!(err.contains(why), "{list:?}: {err}");
    }
    let (dir, _) = fixture("unipc_wan_shift3");
    let mut unipc = Scheduler::load(&dir, None, None).unwrap();
    let err = unipc
        .set_timestep_list(&[1000, 500])
        .unwrap_err()
        .to_string();
    assert!(err.contains("flow-Euler"), "{err}");
}

#[test]
fn flow_euler_stretches_the_schedule_to_shift_terminal_as_diffusers_does() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny-ltx2/reference/scheduler_terminal.json");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut config = reference["config"].clone();
    config["_class_name"] = "FlowMatchEulerDiscreteScheduler".into();
    let mut scheduler = Scheduler::from_config(&config, None, None).unwrap();
    scheduler.set_timesteps(6).unwrap();
    let expected =
        |key: &str| -> Vec<f64> { serde_json::from_value(reference[key].clone()).unwrap() };
    for (got, want) in scheduler.sigmas().iter().zip(expected("sigmas")) {
        assert!((got - want).abs() < 1e-7, "{:?}", scheduler.sigmas());
    }
    assert!(
        (scheduler.sigmas()[5] - 0.2).abs() < 1e-6,
        "ends at shift_terminal"
    );
    for (got, want) in scheduler.timesteps().iter().zip(expected("timesteps")) {
        assert!((got - want).abs() < 1e-4, "{:?}", scheduler.timesteps());
    }
    let outside = serde_json::json!({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift_terminal": 1.5});
    let err = Scheduler::from_config(&outside, None, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("shift_terminal 1.5 is outside 0..1"), "{err}");
}
