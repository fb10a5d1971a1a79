//! One generation split across several ranks (cards), the way xDiT's USP splits a diffusion
//! transformer:
//! - **Sequence parallel** (DeepSpeed-Ulysses): each rank holds a contiguous share of the tokens;
//!   around self-attention an all-to-all trades the token split for a head split, so every rank
//!   attends over the whole sequence with `heads / N` heads; the output is gathered once, after
//!   the model's last projection.
//! - **CFG parallel**: the conditional and unconditional passes of classifier-free guidance run on
//!   different ranks, and their predictions are exchanged.
//!
//! Both combine (2 × Ulysses 2 on four cards): see [`Layout`]. Ranks talk only through
//! [`Collective::exchange`]; on CUDA that is NCCL ([`nccl`]), on the CPU an in-process exchange
//! between the rank threads ([`local`]) that makes the split path testable without GPUs.
//!
//! Whether a model can take a layout is one rule, [`check_layout`], over what its configs say
//! ([`SplitSupport`]): the studio applies it when work is submitted, the engine before the ranks
//! join and again where each rank joins. Its refusals ([`SplitRefused`]) are the same on every
//! attempt.

mod generate;
pub mod local;
#[cfg(feature = "nccl")]
pub mod nccl;
mod ranks;

pub use generate::{RankTime, SplitGeneration, generate_split, generate_split_on};
pub use ranks::{RankContext, on_every_card, run_ranks};

use candle_core::{Device, Result, Shape, Tensor};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

/// One rank's view of a communicator: the one primitive every split is built from.
pub trait Collective: Send + Sync {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Sends `outgoing[p]` to rank `p` and returns, in rank order, what every rank sent this one;
    /// `incoming[p]` is the shape rank `p` sends here, in the dtype of `outgoing`. Every rank of
    /// the group calls it together.
    fn exchange(&self, outgoing: &[Tensor], incoming: &[Shape]) -> Result<Vec<Tensor>>;
    /// The exchanges so far and the time they took, waiting for slower peers included (on CUDA
    /// between events on the stream, read once the work has finished: call it after a
    /// synchronisation).
    fn exchange_time(&self) -> Result<CommTime>;
}

/// How the ranks of one generation share the work: `ulysses` ranks split each pass's tokens, and
/// with `cfg` a second set of as many ranks runs the unconditional pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Layout {
    pub ulysses: usize,
    pub cfg: bool,
}

impl Layout {
    /// The layout for `ranks` cards: with `cfg`, half of them run each guidance branch; Ulysses
    /// splits the tokens over the rest.
    pub fn new(ranks: usize, cfg: bool) -> candle_core::Result<Self> {
        if ranks == 0 || (cfg && !ranks.is_multiple_of(2)) {
            candle_core::bail!(
                "{ranks} ranks cannot run{}: give a positive{} number of cards",
                if cfg { " CFG parallel" } else { "" },
                if cfg { ", even" } else { "" }
            );
        }
        Ok(Self {
            ulysses: ranks / (1 + usize::from(cfg)),
            cfg,
        })
    }

    pub fn ranks(&self) -> usize {
        self.ulysses * (1 + usize::from(self.cfg))
    }

    /// The communicators, in the order every rank joins them: every rank's, then the sequence
    /// groups (one per guidance branch, of one rank where the tokens are not split), then the CFG
    /// pairs (one per token share).
    pub fn groups(&self) -> Vec<(GroupKind, Vec<usize>)> {
        let u = self.ulysses;
        let branches = 1 + usize::from(self.cfg);
        let mut groups = vec![(GroupKind::World, (0..self.ranks()).collect())];
        groups.extend((0..branches).map(|b| (GroupKind::Sequence, (b * u..(b + 1) * u).collect())));
        if self.cfg {
            groups.extend((0..u).map(|i| (GroupKind::Cfg, vec![i, u + i])));
        }
        groups
    }
}

/// What a communicator of a [`Layout`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// Every rank: the decisions they must take together (stop at this step?).
    World,
    /// Ulysses' all-to-all and the final gather of one guidance branch's tokens.
    Sequence,
    /// The two guidance branches' predictions.
    Cfg,
}

/// What a model offers a split of a generation of one size, from its configs: read before
/// anything is loaded (`Pipeline::inspect_split`) or from a loaded pipeline
/// (`Pipeline::split_support`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitSupport {
    /// The attention heads of each of its transformers (Wan 2.2 has two experts): what sequence
    /// parallel shares out among the ranks of a guidance branch.
    pub heads: Vec<usize>,
    /// Whether its guidance branches are passes of their own that CFG parallel can put on
    /// different ranks (Wan's); LTX-2 batches its passes and the FLUX models rarely guide.
    pub cfg_parallel: bool,
    /// The tokens sequence parallel shares out in a generation of that size: the latent grid's
    /// patches (Wan, FLUX), LTX-2's video tokens. Tokens that conditions append to them (a
    /// reference image, LTX-2's keyframes) are not counted, so the rule follows from the size.
    pub tokens: usize,
}

impl SplitSupport {
    /// A model whose `tokens` alone are split ([`split_tokens_only`]).
    pub fn tokens_only(heads: usize, tokens: usize) -> Self {
        Self {
            heads: vec![heads],
            cfg_parallel: false,
            tokens,
        }
    }
}

/// Why a model or a request cannot take a split. Nothing about the run causes it, so another
/// attempt is refused alike: the layout or the request must change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitRefused {
    #[error(
        "{heads} attention heads cannot be split across {ranks} ranks; sequence parallel takes {} ranks",
        ranks_sharing(.heads)
    )]
    Heads { heads: usize, ranks: usize },
    #[error(
        "CFG parallel is for Wan models; split this model's tokens only (without CFG parallel)"
    )]
    CfgParallelUnsupported,
    #[error("CFG parallel needs guidance (a guidance scale above 1)")]
    CfgParallelUnguided,
    // The cache's rule reads the conditional pass to decide for both branches.
    #[error("a step cache cannot run under CFG parallel; split the sequence instead")]
    CfgParallelWithStepCache,
    // Every rank must hold at least one token.
    #[error(
        "a generation of this size has {tokens} tokens, fewer than the {ranks} ranks that would \
         share them: make it larger or split it across fewer cards"
    )]
    Tokens { tokens: usize, ranks: usize },
}

/// The rank counts that share `heads` evenly.
fn ranks_sharing(heads: &usize) -> String {
    let fits: Vec<String> = (1..=*heads)
        .filter(|d| heads.is_multiple_of(*d))
        .map(|d| d.to_string())
        .collect();
    fits.join(", ")
}

/// Whether a model offering `model` (for the generation's size) can run, split by `layout`, a
/// generation guided at `guidance` (on above 1) with or without a step cache: the one rule the
/// studio checks work against when it is submitted and the engine before the ranks join.
pub fn check_layout(
    layout: Layout,
    model: &SplitSupport,
    guidance: f64,
    step_cache: bool,
) -> std::result::Result<(), SplitRefused> {
    if layout.cfg {
        check_cfg_parallel(model.cfg_parallel, guidance, step_cache)?;
    }
    model
        .heads
        .iter()
        .try_for_each(|&heads| check_heads(heads, layout.ulysses))?;
    check_tokens(model.tokens, layout.ulysses)
}

/// Refuses fewer tokens than the `ranks` that share them (more than one: a group of one splits
/// nothing).
fn check_tokens(tokens: usize, ranks: usize) -> std::result::Result<(), SplitRefused> {
    if ranks > 1 && tokens < ranks {
        Err(SplitRefused::Tokens { tokens, ranks })
    } else {
        Ok(())
    }
}

/// Refuses a head count `ranks` cannot share evenly.
fn check_heads(heads: usize, ranks: usize) -> std::result::Result<(), SplitRefused> {
    if heads.is_multiple_of(ranks) {
        Ok(())
    } else {
        Err(SplitRefused::Heads { heads, ranks })
    }
}

/// Refuses CFG parallel for a model whose guidance branches are not passes of their own
/// (`separate_branches`), or for a request without guidance or with a step cache.
pub(crate) fn check_cfg_parallel(
    separate_branches: bool,
    guidance: f64,
    step_cache: bool,
) -> std::result::Result<(), SplitRefused> {
    if !separate_branches {
        Err(SplitRefused::CfgParallelUnsupported)
    } else if guidance <= 1.0 {
        Err(SplitRefused::CfgParallelUnguided)
    } else if step_cache {
        Err(SplitRefused::CfgParallelWithStepCache)
    } else {
        Ok(())
    }
}

/// A transformer whose tokens can be split across ranks (Ulysses): it keeps its share of the
/// tokens after embedding them, trades tokens for heads around self-attention, and gathers its
/// output at the end.
pub trait SequenceSplit {
    /// The attention heads a split shares out.
    fn split_heads(&self) -> usize;
    /// Where the transformer keeps its sequence group.
    fn sequence_slot(&mut self) -> &mut Option<Arc<SequenceParallel>>;

    /// Splits every later call's tokens across the ranks of `sequence`, or with `None` runs whole
    /// again. Every rank of the group must make the same calls; each returns the whole output.
    fn set_sequence_parallel(
        &mut self,
        sequence: Option<Arc<SequenceParallel>>,
    ) -> anyhow::Result<()> {
        if let Some(sp) = &sequence {
            check_heads(self.split_heads(), sp.ranks())?;
        }
        // A group of one splits nothing: the whole-sequence path (and its fused kernels) stays.
        *self.sequence_slot() = sequence.filter(|sp| sp.ranks() > 1);
        Ok(())
    }
}

/// Makes `transformer` one rank of `split` for a model whose guidance passes stay together on a
/// rank (LTX-2 batches them, FLUX rarely guides): only its tokens are split.
pub(crate) fn split_tokens_only(
    name: &str,
    transformer: &mut dyn SequenceSplit,
    split: Split,
) -> anyhow::Result<Split> {
    use anyhow::Context;
    if split.cfg.is_some() {
        return Err(
            anyhow::Error::new(SplitRefused::CfgParallelUnsupported).context(name.to_string())
        );
    }
    transformer
        .set_sequence_parallel(split.sequence.clone())
        .with_context(|| format!("{name}: transformer"))?;
    Ok(split)
}

/// What one rank of a split generation holds: the group of every rank, its sequence group and
/// its CFG group.
#[derive(Clone, Default)]
pub struct Split {
    pub world: Option<Arc<dyn Collective>>,
    pub sequence: Option<Arc<SequenceParallel>>,
    pub cfg: Option<Arc<dyn Collective>>,
}

impl Split {
    /// The guidance branch this rank computes (0 conditional, 1 unconditional) under CFG parallel.
    /// The time this rank spent in the exchanges of all its groups so far.
    pub fn exchange_time(&self) -> Result<CommTime> {
        let mut total = CommTime::default();
        for group in [&self.world, &self.cfg].into_iter().flatten() {
            total = total + group.exchange_time()?;
        }
        if let Some(sp) = &self.sequence {
            total = total + sp.group().exchange_time()?;
        }
        Ok(total)
    }

    /// Whether this is the first rank of its generation (the one that decodes and reports).
    pub fn leads(&self) -> bool {
        self.sequence.as_ref().is_none_or(|sp| sp.rank() == 0)
            && self.cfg.as_ref().is_none_or(|group| group.rank() == 0)
    }
}

/// Ulysses over one communicator.
pub struct SequenceParallel {
    group: Arc<dyn Collective>,
    /// Why this rank could not take its share of a call's tokens, kept for [`run_ranks`] to
    /// return: the transformers fail with candle's errors, which carry only text.
    refused: OnceLock<SplitRefused>,
}

/// Time a rank spent exchanging, and how many exchanges.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CommTime {
    pub exchanges: usize,
    pub ms: f64,
}

impl std::ops::Add for CommTime {
    type Output = CommTime;
    fn add(self, other: CommTime) -> CommTime {
        CommTime {
            exchanges: self.exchanges + other.exchanges,
            ms: self.ms + other.ms,
        }
    }
}

impl SequenceParallel {
    pub fn new(group: Arc<dyn Collective>) -> Self {
        Self {
            group,
            refused: OnceLock::new(),
        }
    }

    /// Why a call's tokens could not be shared out on this rank, once one could not.
    pub fn refused(&self) -> Option<&SplitRefused> {
        self.refused.get()
    }

    pub fn group(&self) -> &dyn Collective {
        self.group.as_ref()
    }

    pub fn ranks(&self) -> usize {
        self.group.size()
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// The contiguous token range of every rank; the first `tokens % N` ranks hold one more.
    pub fn split(&self, tokens: usize) -> Vec<Range<usize>> {
        let n = self.ranks();
        let (share, extra) = (tokens / n, tokens % n);
        let mut start = 0;
        (0..n)
            .map(|r| {
                let len = share + usize::from(r < extra);
                start += len;
                start - len..start
            })
            .collect()
    }

    /// This rank's share of `x` along `dim` (the token dimension, of full length there). Every
    /// rank must hold at least one token: fewer tokens are refused ([`Self::refused`]).
    pub fn shard(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        let tokens = x.dim(dim)?;
        if let Err(refused) = check_tokens(tokens, self.ranks()) {
            let _ = self.refused.set(refused.clone());
            return Err(candle_core::Error::wrap(refused));
        }
        let range = &self.split(tokens)[self.rank()];
        x.narrow(dim, range.start, range.len())
    }

    /// `[B, s_r, H, D]` (this rank's tokens, every head) to `[B, S, H/N, D]` (every token, this
    /// rank's heads), for a sequence of `tokens` in all.
    pub fn heads_to_sequence(&self, x: &Tensor, tokens: usize) -> Result<Tensor> {
        let (b, local, heads, d) = x.dims4()?;
        let n = self.ranks();
        if n == 1 {
            return Ok(x.clone());
        }
        let per_rank = heads / n;
        let outgoing = (0..n)
            .map(|p| x.narrow(2, p * per_rank, per_rank)?.contiguous())
            .collect::<Result<Vec<_>>>()?;
        let incoming = self
            .split(tokens)
            .iter()
            .map(|r| Shape::from((b, r.len(), per_rank, d)))
            .collect::<Vec<_>>();
        debug_assert_eq!(incoming[self.rank()].dims()[1], local);
        Tensor::cat(&self.group.exchange(&outgoing, &incoming)?, 1)
    }

    /// The inverse of [`Self::heads_to_sequence`]: `[B, S, H/N, D]` to `[B, s_r, H, D]`.
    pub fn sequence_to_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, tokens, per_rank, d) = x.dims4()?;
        if self.ranks() == 1 {
            return Ok(x.clone());
        }
        let ranges = self.split(tokens);
        let outgoing = ranges
            .iter()
            .map(|r| x.narrow(1, r.start, r.len())?.contiguous())
            .collect::<Result<Vec<_>>>()?;
        let mine = ranges[self.rank()].len();
        let incoming = vec![Shape::from((b, mine, per_rank, d)); self.ranks()];
        Tensor::cat(&self.group.exchange(&outgoing, &incoming)?, 2)
    }

    /// This rank's share of the heads of `x` `[B, L, H, D]`: `[B, L, H/N, D]`, the heads the
    /// all-to-all gives it.
    pub fn own_heads(&self, x: &Tensor) -> Result<Tensor> {
        let per_rank = x.dim(2)? / self.ranks();
        x.narrow(2, self.rank() * per_rank, per_rank)
    }

    /// Every rank's heads `[B, L, H/N, D]` of the same tokens joined into `[B, L, H, D]`.
    pub fn gather_heads(&self, x: &Tensor) -> Result<Tensor> {
        if self.ranks() == 1 {
            return Ok(x.clone());
        }
        let x = x.contiguous()?;
        let outgoing = vec![x.clone(); self.ranks()];
        let incoming = vec![x.shape().clone(); self.ranks()];
        Tensor::cat(&self.group.exchange(&outgoing, &incoming)?, 2)
    }

    /// Every rank's `[B, s_r, C]` joined into `[B, S, C]` on every rank.
    pub fn gather(&self, x: &Tensor, tokens: usize) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        if self.ranks() == 1 {
            return Ok(x.clone());
        }
        let x = x.contiguous()?;
        let outgoing = vec![x.clone(); self.ranks()];
        let incoming = self
            .split(tokens)
            .iter()
            .map(|r| Shape::from((b, r.len(), c)))
            .collect::<Vec<_>>();
        Tensor::cat(&self.group.exchange(&outgoing, &incoming)?, 1)
    }
}

/// Whether any rank of `world` wants to stop: every rank calls it at the same point with its own
/// wish and all get the same answer, so they stop together (a rank that stopped alone would leave
/// its peers waiting at their next exchange).
pub fn agree_to_stop(world: &dyn Collective, stop: bool, device: &Device) -> Result<bool> {
    let wish = Tensor::new(&[f32::from(u8::from(stop))], device)?;
    let wishes = world.exchange(
        &vec![wish; world.size()],
        &vec![Shape::from(1); world.size()],
    )?;
    let any = Tensor::cat(&wishes, 0)?.max_all()?.to_scalar::<f32>()?;
    Ok(any > 0.0)
}

/// Under CFG parallel, this rank's prediction exchanged with its partner's: `(cond, uncond)`.
pub fn exchange_guidance(group: &dyn Collective, mine: &Tensor) -> Result<(Tensor, Tensor)> {
    let mine = mine.contiguous()?;
    let shape = mine.shape().clone();
    let mut both = group.exchange(&[mine.clone(), mine], &[shape.clone(), shape])?;
    let uncond = both.pop().expect("two ranks");
    let cond = both.pop().expect("two ranks");
    Ok((cond, uncond))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_differ_by_at_most_one_token_and_cover_the_sequence() {
        let groups = local::LocalGroup::create(3);
        let sp = SequenceParallel::new(groups[1].clone());
        assert_eq!(sp.split(8), vec![0..3, 3..6, 6..8]);
        assert_eq!(sp.split(2), vec![0..1, 1..2, 2..2]);
    }

    #[test]
    fn layouts_a_model_cannot_take_are_refused_naming_why() {
        let wan = SplitSupport {
            heads: vec![40, 40],
            cfg_parallel: true,
            tokens: 32760,
        };
        let check = |ranks, cfg, model: &SplitSupport, guidance, cache| {
            check_layout(Layout::new(ranks, cfg).unwrap(), model, guidance, cache)
        };
        assert_eq!(check(4, false, &wan, 5.0, true), Ok(()));
        assert_eq!(check(8, true, &wan, 5.0, false), Ok(()));
        let err = check(3, false, &wan, 5.0, false).unwrap_err();
        assert_eq!(
            err,
            SplitRefused::Heads {
                heads: 40,
                ranks: 3
            }
        );
        assert_eq!(
            err.to_string(),
            "40 attention heads cannot be split across 3 ranks; sequence parallel takes \
             1, 2, 4, 5, 8, 10, 20, 40 ranks"
        );
        // Under CFG parallel the tokens of each guidance branch are split over half the ranks.
        assert_eq!(
            check(6, true, &wan, 5.0, false),
            Err(SplitRefused::Heads {
                heads: 40,
                ranks: 3
            })
        );
        assert_eq!(
            check(2, true, &wan, 1.0, false),
            Err(SplitRefused::CfgParallelUnguided)
        );
        assert_eq!(
            check(2, true, &wan, 5.0, true),
            Err(SplitRefused::CfgParallelWithStepCache)
        );
        let ltx = SplitSupport::tokens_only(32, 6144);
        assert_eq!(check(2, false, &ltx, 3.0, false), Ok(()));
        assert_eq!(
            check(2, true, &ltx, 3.0, false),
            Err(SplitRefused::CfgParallelUnsupported)
        );
        // A size too small for the ranks that share its tokens: under CFG parallel, half of them.
        let tiny = SplitSupport { tokens: 3, ..wan };
        let err = check(8, true, &tiny, 5.0, false).unwrap_err();
        assert_eq!(
            err,
            SplitRefused::Tokens {
                tokens: 3,
                ranks: 4
            }
        );
        assert_eq!(
            err.to_string(),
            "a generation of this size has 3 tokens, fewer than the 4 ranks that would share \
             them: make it larger or split it across fewer cards"
        );
        assert_eq!(check(2, true, &tiny, 5.0, false), Ok(()));
        // One card shares nothing.
        let none = SplitSupport { tokens: 0, ..tiny };
        assert_eq!(check(2, true, &none, 5.0, false), Ok(()));
    }

    #[test]
    fn layouts_pair_the_guidance_branches_of_each_token_share() {
        use GroupKind::{Cfg, Sequence, World};
        let both = Layout::new(4, true).unwrap();
        assert_eq!((both.ulysses, both.ranks()), (2, 4));
        assert_eq!(
            Layout::new(1, false).unwrap().groups(),
            vec![(World, vec![0]), (Sequence, vec![0])]
        );
        assert_eq!(
            both.groups(),
            vec![
                (World, vec![0, 1, 2, 3]),
                (Sequence, vec![0, 1]),
                (Sequence, vec![2, 3]),
                (Cfg, vec![0, 2]),
                (Cfg, vec![1, 3])
            ]
        );
        assert_eq!(
            Layout::new(2, true).unwrap().groups(),
            vec![
                (World, vec![0, 1]),
                (Sequence, vec![0]),
                (Sequence, vec![1]),
                (Cfg, vec![0, 1])
            ]
        );
        assert_eq!(
            Layout::new(3, false).unwrap().groups(),
            vec![(World, vec![0, 1, 2]), (Sequence, vec![0, 1, 2])]
        );
        let err = Layout::new(3, true).unwrap_err().to_string();
        assert!(err.contains("even"), "{err}");
    }
}
