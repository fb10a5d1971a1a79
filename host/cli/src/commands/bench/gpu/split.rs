//! `bench split`: one Wan transformer call (with `--cfg`, one guided step) on one card, then the
//! same call split across `--cards` as a split generation runs it ([`videosdgx_engine::parallel`]).
//! Every rank builds the same seeded random weights, so the split output is compared with the
//! one-card output of the same weights and inputs. Rank 0 times the one-card call first, on its
//! own card, before the split (its peers wait at their first exchange); then every rank times the
//! split call (CUDA events, median after warm-up) and its exchanges (CUDA events around each, the
//! mean per call): the rest of its time is compute.

use super::{RandomWeights, time_ms};
use crate::commands::bench::configs::transformer_config;
use crate::commands::bench::{Preset, SplitArgs, token_grid};
use anyhow::Context;
use candle_core::cuda_backend::cudarc::driver::CudaContext;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use videosdgx_engine::families::wan::transformer::WanTransformer3DModel;
use videosdgx_engine::models::relative_error;
use videosdgx_engine::parallel::{
    CommTime, Layout, RankContext, SequenceSplit, exchange_guidance, run_ranks,
};

const GUIDANCE: f64 = 5.0;

#[derive(Serialize)]
struct SplitReport {
    gpu: String,
    preset: Preset,
    height: usize,
    width: usize,
    frames: usize,
    tokens: usize,
    layout: Layout,
    cards: Vec<usize>,
    /// The call on one card (rank 0's), median milliseconds.
    one_card_ms: f64,
    /// The split call: the slowest rank's median.
    split_ms: f64,
    /// `split_ms / one_card_ms` (a perfect split over N cards: 1/N).
    ratio: f64,
    /// ‖split − one card‖ / ‖one card‖ of the output (bf16 rounding only).
    error_vs_one_card: f64,
    ranks: Vec<RankTiming>,
    reps: u32,
}

#[derive(Serialize)]
struct RankTiming {
    rank: usize,
    card: usize,
    ms: f64,
    /// Per call: the exchanges and the time they took (waiting for slower peers included), and
    /// the rest of the call.
    exchange: CommTime,
    compute_ms: f64,
}

/// What one rank measured; rank 0 also the one-card call and both outputs.
struct RankResult {
    timing: RankTiming,
    one_card: Option<(f64, Tensor, Tensor)>,
}

pub fn bench(args: &SplitArgs) -> anyhow::Result<()> {
    let cards = match args.cards.is_empty() {
        true => (0..CudaContext::device_count()?.max(0) as usize).collect(),
        false => args.cards.clone(),
    };
    let layout = Layout::new(cards.len(), args.cfg)?;
    let shape = args.preset.shape();
    let (f, h, w) = token_grid(&shape, args.height, args.width, args.frames)?;
    let config = transformer_config(&shape);
    // The inputs are drawn once, on the CPU: every rank gets the same.
    let latents = Tensor::randn(
        0f32,
        1.,
        (1, shape.in_channels, f, h * 2, w * 2),
        &Device::Cpu,
    )?;
    let texts = [
        Tensor::randn(0f32, 1., (1, 512, 4096), &Device::Cpu)?,
        Tensor::randn(0f32, 1., (1, 512, 4096), &Device::Cpu)?,
    ];
    let devices = cards
        .iter()
        .map(|&c| Device::new_cuda(c).with_context(|| format!("no CUDA card {c}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let gpu = match &devices[0] {
        Device::Cuda(d) => d.cuda_stream().context().name()?,
        _ => unreachable!("CUDA devices"),
    };

    let results = run_ranks(layout, &devices, |rank| {
        let card = cards[rank.rank];
        rank_bench(args, &config, rank, card, &latents, &texts)
            .with_context(|| format!("rank on card {card}"))
    })?;

    let one_card = results[0]
        .one_card
        .as_ref()
        .context("rank 0 timed one card")?;
    let (one_card_ms, whole, split) = one_card;
    let split_ms = results.iter().map(|r| r.timing.ms).fold(0f64, f64::max);
    let report = SplitReport {
        gpu,
        preset: args.preset,
        height: args.height,
        width: args.width,
        frames: args.frames,
        tokens: f * h * w,
        layout,
        cards,
        one_card_ms: *one_card_ms,
        split_ms,
        ratio: split_ms / one_card_ms,
        error_vs_one_card: relative_error(split, whole)?,
        ranks: results.into_iter().map(|r| r.timing).collect(),
        reps: args.reps,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} tokens on {} ({:?}): one card {:.1} ms, split {:.1} ms = {:.3}x, error {:.2e}",
            report.tokens,
            report.gpu,
            report.layout,
            report.one_card_ms,
            report.split_ms,
            report.ratio,
            report.error_vs_one_card
        );
        for r in &report.ranks {
            println!(
                "  rank {} (cuda:{}): {:.1} ms; exchanges {:.1} ms in {}, the rest {:.1} ms",
                r.rank, r.card, r.ms, r.exchange.ms, r.exchange.exchanges, r.compute_ms
            );
        }
    }
    Ok(())
}

fn rank_bench(
    args: &SplitArgs,
    config: &videosdgx_engine::families::wan::transformer::WanTransformerConfig,
    rank: RankContext,
    card: usize,
    latents: &Tensor,
    texts: &[Tensor; 2],
) -> anyhow::Result<RankResult> {
    let dev = &rank.device;
    let params = Arc::new(AtomicUsize::new(0));
    // Seeded: every card builds the same weights.
    let vb = RandomWeights {
        params,
        seeded: true,
    }
    .into_builder(DType::BF16, dev);
    let mut model = WanTransformer3DModel::new(config, vb).context("building the transformer")?;
    let bf16 = |t: &Tensor| t.to_device(dev)?.to_dtype(DType::BF16);
    let latents = bf16(latents)?;
    let texts = [bf16(&texts[0])?, bf16(&texts[1])?];
    let timestep = Tensor::new(&[500f32], dev)?;
    let forward = |model: &WanTransformer3DModel, text: &Tensor| {
        model.forward(&latents, &timestep, text, None)
    };
    let guided = |cond: &Tensor, uncond: &Tensor| -> candle_core::Result<Tensor> {
        uncond + ((cond - uncond)? * GUIDANCE)?
    };
    // One call as the split runs it: a forward, or under --cfg a guided step, the branches on
    // their two ranks where the layout pairs them.
    let call = |model: &WanTransformer3DModel| -> anyhow::Result<Tensor> {
        Ok(match (&rank.split.cfg, args.cfg) {
            (Some(pair), _) => {
                let mine = forward(model, &texts[pair.rank()])?;
                let (cond, uncond) = exchange_guidance(pair.as_ref(), &mine)?;
                guided(&cond, &uncond)?
            }
            (None, true) => guided(&forward(model, &texts[0])?, &forward(model, &texts[1])?)?,
            (None, false) => forward(model, &texts[0])?,
        })
    };
    let host = |t: &Tensor| t.to_dtype(DType::F32)?.to_device(&Device::Cpu);

    let one_card = match rank.rank {
        0 => {
            let mut out = None;
            let ms = time_ms(dev, args.warmup, args.reps, || {
                out = Some(match args.cfg {
                    true => guided(&forward(&model, &texts[0])?, &forward(&model, &texts[1])?)?,
                    false => forward(&model, &texts[0])?,
                });
                Ok(())
            })?;
            Some((ms, host(&out.context("timed")?)?))
        }
        _ => None,
    };

    model.set_sequence_parallel(rank.split.sequence.clone())?;
    let before = rank.split.exchange_time()?;
    let mut out = None;
    let ms = time_ms(dev, args.warmup, args.reps, || {
        out = Some(call(&model)?);
        Ok(())
    })?;
    // Every call of the warm-up and the timed runs exchanged alike: the mean per call.
    let calls = f64::from(args.warmup + args.reps);
    let spent = rank.split.exchange_time()?;
    let exchange = CommTime {
        exchanges: ((spent.exchanges - before.exchanges) as f64 / calls).round() as usize,
        ms: (spent.ms - before.ms) / calls,
    };

    let split_out = host(&out.context("timed")?)?;
    Ok(RankResult {
        timing: RankTiming {
            rank: rank.rank,
            card,
            ms,
            exchange,
            compute_ms: ms - exchange.ms,
        },
        one_card: one_card.map(|(ms, whole)| (ms, whole, split_out)),
    })
}
