//! Parameters shared by the CPU references and the CUDA kernels, so both sides are called the
//! same way and a test can hand one description to each.

use candle_core::{Result, Tensor, bail};

/// Which normalisation a [`NormSpec`] applies before its affine and modulation terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `(x - mean) / sqrt(var + eps)` over the last dimension.
    Layer,
    /// `x / sqrt(mean(x^2) + eps)` over the last dimension.
    Rms,
}

/// A normalisation over the last dimension of `x [B, L, D]` followed by
/// `y = (n * weight + bias) * (1 + scale) + shift`, every term optional, then optionally Wan's
/// 3-D RoPE of each head of `y`.
///
/// `weight`/`bias` are `[D]`; `scale`/`shift` are `[B, D]` (one modulation per sample, Wan 2.1)
/// or `[B, L, D]` (one per token, Wan 2.2 TI2V). All four are read as f32.
#[derive(Debug, Clone)]
pub struct NormSpec {
    pub kind: NormKind,
    pub eps: f64,
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub scale: Option<Tensor>,
    pub shift: Option<Tensor>,
    pub rope: Option<NormRope>,
}

/// The RoPE a [`NormSpec`] applies to its output, read as `[B, L, D / head_dim, head_dim]`:
/// the q/k path of Wan's self-attention (RMS norm across heads, then RoPE) in one pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormRope {
    pub grid: RopeGrid,
    pub head_dim: usize,
    pub theta: f64,
}

impl NormRope {
    /// Checks that this RoPE fits a norm over `tokens` rows of width `dim`.
    pub fn check(&self, tokens: usize, dim: usize) -> Result<()> {
        if tokens != self.grid.tokens() {
            bail!(
                "rope grid {:?} has {} tokens but the norm input has {tokens}",
                self.grid,
                self.grid.tokens()
            );
        }
        // The kernel rotates 8-element chunks, which must not straddle two heads, and a warp's
        // 256-element stride must land at the same place of a head.
        if self.head_dim == 0
            || !dim.is_multiple_of(self.head_dim)
            || !self.head_dim.is_multiple_of(8)
            || !256usize.is_multiple_of(self.head_dim)
        {
            bail!(
                "rope head_dim {} must be a multiple of 8 dividing 256 and the norm dim {dim}",
                self.head_dim
            );
        }
        RopeGrid::split_checked(self.head_dim)?;
        Ok(())
    }
}

impl NormSpec {
    /// A plain norm with no affine or modulation terms.
    pub fn new(kind: NormKind, eps: f64) -> Self {
        Self {
            kind,
            eps,
            weight: None,
            bias: None,
            scale: None,
            shift: None,
            rope: None,
        }
    }

    /// Checks every optional term against `x`'s shape; returns how many rows of `x` share one
    /// row of scale/shift (L for per-sample modulation, 1 for per-token).
    pub(crate) fn validate(&self, x: &Tensor) -> Result<usize> {
        let (b, l, d) = x.dims3().map_err(|_| {
            candle_core::Error::Msg(format!(
                "norm input must be [batch, seq, dim], got {:?}",
                x.dims()
            ))
        })?;
        if d % 8 != 0 {
            bail!("norm dim must be a multiple of 8, got {d}");
        }
        for (name, t) in [("weight", &self.weight), ("bias", &self.bias)] {
            if let Some(t) = t
                && t.dims() != [d]
            {
                bail!("norm {name} must be [{d}], got {:?}", t.dims());
            }
        }
        let mut rows_per = None;
        for (name, t) in [("scale", &self.scale), ("shift", &self.shift)] {
            let Some(t) = t else { continue };
            let per = match t.dims() {
                [tb, td] if *tb == b && *td == d => l,
                [tb, tl, td] if *tb == b && *tl == l && *td == d => 1,
                other => bail!("norm {name} must be [{b}, {d}] or [{b}, {l}, {d}], got {other:?}"),
            };
            if rows_per.is_some_and(|p| p != per) {
                bail!("norm scale and shift must have the same shape");
            }
            rows_per = Some(per);
        }
        if let Some(rope) = &self.rope {
            rope.check(l, d)?;
        }
        Ok(rows_per.unwrap_or(l))
    }
}

/// Checks `x + y * gate`'s shapes: `x`, `y` `[B, L, D]`, `gate` `[B, D]` or `[B, L, D]`; returns
/// how many rows of `x` share one row of `gate`.
pub(crate) fn validate_gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<usize> {
    let (b, l, d) = x.dims3().map_err(|_| {
        candle_core::Error::Msg(format!(
            "gated residual input must be [batch, seq, dim], got {:?}",
            x.dims()
        ))
    })?;
    if y.dims() != x.dims() {
        bail!(
            "gated residual: y {:?} must match x {:?}",
            y.dims(),
            x.dims()
        );
    }
    match gate.dims() {
        [gb, gd] if *gb == b && *gd == d => Ok(l),
        [gb, gl, gd] if *gb == b && *gl == l && *gd == d => Ok(1),
        other => bail!("gated residual: gate must be [{b}, {d}] or [{b}, {l}, {d}], got {other:?}"),
    }
}

/// How a video's frames are padded in space (`torch.nn.functional.pad`'s modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpatialPad {
    Zeros,
    /// The edge pixel repeated.
    Replicate,
    /// Mirrored about the edge pixel, which is not repeated; the pad must be smaller than the
    /// frame.
    Reflect,
}

/// The padding of frames-major video `x [B, T, C, H, W]` before a convolution: `before` copies
/// of the first frame and `after` of the last (a causal convolution's time padding), and `pad`
/// pixels on each side of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePadding {
    pub before: usize,
    pub after: usize,
    pub pad: usize,
    pub mode: SpatialPad,
}

impl FramePadding {
    /// Checks `x` against this padding; returns the padded shape.
    pub fn output_shape(&self, x: &Tensor) -> Result<[usize; 5]> {
        let (b, t, c, h, w) = x.dims5().map_err(|_| {
            candle_core::Error::Msg(format!(
                "padded video must be [batch, frames, channels, height, width], got {:?}",
                x.dims()
            ))
        })?;
        self.output_shape_of([b, t, c, h, w])
    }

    /// [`Self::output_shape`] of the dims `[B, T, C, H, W]`.
    pub(crate) fn output_shape_of(&self, [b, t, c, h, w]: [usize; 5]) -> Result<[usize; 5]> {
        if t == 0 {
            bail!("padding needs at least one frame to repeat");
        }
        if self.mode == SpatialPad::Reflect && (self.pad >= h || self.pad >= w) {
            bail!(
                "reflect padding by {} needs more than {} pixels, input is {:?}",
                self.pad,
                self.pad,
                [b, t, c, h, w]
            );
        }
        Ok([
            b,
            self.before + t + self.after,
            c,
            h + 2 * self.pad,
            w + 2 * self.pad,
        ])
    }
}

/// What a channel norm divides each pixel's channels by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ChannelDivisor {
    /// Their L2 norm, at least 1e-12 (`F.normalize`: Wan's VAE, whose scale is `sqrt(C)·gamma`).
    L2,
    /// Their RMS, `sqrt(mean(x²) + eps)` (LTX-2's `PerChannelRMSNorm`).
    Rms { eps: f64 },
}

/// How a rotary embedding from tables pairs the values of a row `[D]` it rotates; table entry `p`
/// (of `D / 2`) rotates pair `p`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotaryPairs {
    /// `(x[2p], x[2p + 1])`: diffusers' `apply_rotary_emb` with `use_real_unbind_dim=-1`.
    Interleaved,
    /// `(x[h·head_dim + i], x[h·head_dim + i + head_dim / 2])`: each head's first half with its
    /// second (LTX-2's `apply_split_rotary_emb`), pair `p = h·head_dim / 2 + i`.
    Split { head_dim: usize },
}

impl RotaryPairs {
    /// Checks `x [B, L, D]` against the tables `cos`/`sin` `[T, D / 2]`, where `T` is `L` (one
    /// table for every sample) or `B·L`; returns `T`.
    pub fn check(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<usize> {
        let (b, l, d) = x.dims3().map_err(|_| {
            candle_core::Error::Msg(format!(
                "rotary input must be [batch, seq, dim], got {:?}",
                x.dims()
            ))
        })?;
        if let Self::Split { head_dim } = *self
            && (head_dim == 0 || !head_dim.is_multiple_of(2) || !d.is_multiple_of(head_dim))
        {
            bail!("rotary head_dim {head_dim} must be even and divide the row width {d}");
        }
        let rows = cos.dim(0).unwrap_or(0);
        if !d.is_multiple_of(2)
            || cos.dims() != [rows, d / 2]
            || sin.dims() != cos.dims()
            || (rows != l && rows != b * l)
        {
            bail!(
                "rotary tables {:?}/{:?} do not fit rows {:?} (want [{l} or {}, {}])",
                cos.dims(),
                sin.dims(),
                x.dims(),
                b * l,
                d / 2
            );
        }
        Ok(rows)
    }
}

/// The latent token grid of a video: `frames * height * width` tokens in (f, h, w) order, as
/// Wan's 3-D RoPE sees it after patching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RopeGrid {
    pub frames: usize,
    pub height: usize,
    pub width: usize,
}

impl RopeGrid {
    pub fn tokens(&self) -> usize {
        self.frames * self.height * self.width
    }

    /// Wan's split of the head dim: height and width get `2 * (d / 6)` each, frames the rest.
    pub fn split(head_dim: usize) -> (usize, usize) {
        let hw = 2 * (head_dim / 6);
        (head_dim - 2 * hw, hw)
    }

    /// [`Self::split`], refusing head dims that have no even frame/height/width parts.
    pub(crate) fn split_checked(head_dim: usize) -> Result<(usize, usize)> {
        let (t_dim, hw_dim) = Self::split(head_dim);
        if !head_dim.is_multiple_of(2) || !t_dim.is_multiple_of(2) || hw_dim == 0 {
            bail!("rope head_dim {head_dim} cannot be split into even frame/height/width parts");
        }
        Ok((t_dim, hw_dim))
    }

    pub(crate) fn validate(&self, x: &Tensor) -> Result<(usize, usize, usize, usize)> {
        let (b, l, h, d) = x.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "rope input must be [batch, seq, heads, head_dim], got {:?}",
                x.dims()
            ))
        })?;
        if l != self.tokens() {
            bail!(
                "rope grid {self:?} has {} tokens but the input has {l}",
                self.tokens()
            );
        }
        Self::split_checked(d)?;
        Ok((b, l, h, d))
    }
}

/// A convolution over frames-major video `x [B, T, C, H, W]`: each output frame reads `taps`
/// consecutive input frames (one every `stride_t` frames) as a single `taps * C`-channel image and
/// convolves it with a `[O, taps * C, kh, kw]` kernel, `pad` zeros around each spatial side and
/// `stride` in both spatial dims. The output is `[B, T_out, O, H_out, W_out]`.
///
/// A causal 3-D convolution (time already padded) is `taps = kt` with its kernel's temporal taps
/// moved in front of the channels (`[O, C, kt, kh, kw]` → `[O, kt, C, kh, kw]`); a per-frame 2-D
/// convolution is `taps = 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameConv {
    pub taps: usize,
    pub stride_t: usize,
    pub pad: usize,
    pub stride: usize,
}

impl FrameConv {
    /// Output frames for `t` input frames, or an error when there are fewer than `taps`.
    pub fn out_frames(&self, t: usize) -> Result<usize> {
        if self.taps == 0 || self.stride_t == 0 || self.stride == 0 {
            bail!("frame conv: taps and strides must be positive, got {self:?}");
        }
        if t < self.taps {
            bail!("frame conv needs at least {} frames, got {t}", self.taps);
        }
        Ok((t - self.taps) / self.stride_t + 1)
    }

    /// Output size of one spatial dim of `size` pixels under a kernel of `k`.
    pub fn out_size(&self, size: usize, k: usize) -> Result<usize> {
        if size + 2 * self.pad < k {
            bail!(
                "frame conv: kernel {k} is larger than {size} pixels padded by {}",
                self.pad
            );
        }
        Ok((size + 2 * self.pad - k) / self.stride + 1)
    }

    /// Whether every input and output frame starts 16-byte aligned (`C*H*W` and
    /// `O*H_out*W_out` multiples of 8 elements), as cuDNN's tensor-core algorithms need for
    /// the one-call-per-frame convolution.
    pub fn frames_aligned(&self, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<bool> {
        let [_, _, o, h_out, w_out] = self.output_shape(x, weight, bias)?;
        let in_frame: usize = x.dims()[2..].iter().product();
        Ok(in_frame.is_multiple_of(8) && (o * h_out * w_out).is_multiple_of(8))
    }

    /// Checks `x [B, T, C, H, W]`, `weight [O, taps * C, kh, kw]` and `bias [O]` against each
    /// other; returns the output shape.
    pub fn output_shape(&self, x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<[usize; 5]> {
        let (b, t, c, h, w) = x.dims5().map_err(|_| {
            candle_core::Error::Msg(format!(
                "frame conv input must be [batch, frames, channels, height, width], got {:?}",
                x.dims()
            ))
        })?;
        let (o, ck, kh, kw) = weight.dims4().map_err(|_| {
            candle_core::Error::Msg(format!(
                "frame conv weight must be [out, taps*in, kh, kw], got {:?}",
                weight.dims()
            ))
        })?;
        if ck != self.taps * c {
            bail!(
                "frame conv weight {:?} needs {} input channels ({} taps x {c}), has {ck}",
                weight.dims(),
                self.taps * c,
                self.taps
            );
        }
        if bias.dims() != [o] {
            bail!("frame conv bias must be [{o}], got {:?}", bias.dims());
        }
        Ok([
            b,
            self.out_frames(t)?,
            o,
            self.out_size(h, kh)?,
            self.out_size(w, kw)?,
        ])
    }
}

/// Which keys each query of a language model's causal attention sees
/// ([`crate::reference::causal_attention`] and the CUDA kernel): every real key up to its own
/// position, the last `window` of them in a sliding-window layer. A query that sees none (a
/// padding position before its sequence's first real token) averages every key, as the
/// reference's additive mask of the dtype's minimum makes it do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CausalMask {
    /// Keys before the first query (a KV cache's length): query row `i` is at position
    /// `offset + i`.
    pub offset: usize,
    /// A sliding-window layer's window (at least 1).
    pub window: Option<usize>,
    /// Each sequence's first and last real (non-padding) key; `None` when every key is real.
    pub real_keys: Option<Vec<(usize, usize)>>,
}

impl CausalMask {
    /// The first and last key that query row `row` of sequence `b` sees among `keys`, `None`
    /// when it sees none.
    pub fn visible(&self, b: usize, row: usize, keys: usize) -> Option<(usize, usize)> {
        let position = self.offset + row;
        let (first, last) = self
            .real_keys
            .as_ref()
            .map_or((0, keys.saturating_sub(1)), |r| r[b]);
        let hi = position.min(last);
        let lo = self
            .window
            .map_or(first, |w| first.max((position + 1).saturating_sub(w)));
        (lo <= hi).then_some((lo, hi))
    }

    /// Checks causal attention's operands, `q [B, Lq, H, D]` and `k`/`v [B, Lk, Hkv, D]` with
    /// `Hkv` dividing `H`, against each other and this mask; returns the query heads a key/value
    /// head serves (`H / Hkv`).
    pub fn check_operands(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<usize> {
        let (b, lq, h, d) = q.dims4()?;
        let (kb, lk, kv_heads, kd) = k.dims4()?;
        if (kb, kd) != (b, d) || v.dims() != k.dims() || kv_heads == 0 || h % kv_heads != 0 {
            bail!(
                "causal attention: shapes disagree: q {:?}, k {:?}, v {:?}",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        self.check(b, lq, lk)?;
        Ok(h / kv_heads)
    }

    /// Refuses a mask that does not fit `batch` sequences of `queries` new and `keys` keys in all.
    fn check(&self, batch: usize, queries: usize, keys: usize) -> Result<()> {
        if self.offset + queries > keys {
            bail!(
                "causal mask: {queries} queries after {} cached keys need {} keys, got {keys}",
                self.offset,
                self.offset + queries
            );
        }
        if self.window == Some(0) {
            bail!("causal mask: a sliding window must hold at least one key");
        }
        if let Some(ranges) = &self.real_keys {
            if ranges.len() != batch {
                bail!(
                    "causal mask: {} real-key ranges for a batch of {batch}",
                    ranges.len()
                );
            }
            if let Some((b, (first, last))) = ranges
                .iter()
                .enumerate()
                .find(|(_, (first, last))| first > last || *last >= keys)
            {
                bail!(
                    "causal mask: sequence {b}'s real keys {first}..={last} do not lie in 0..{keys}"
                );
            }
        }
        Ok(())
    }
}

/// What a convolution does to its output after adding the bias, in the same pass as the bias on
/// CUDA: `activation(conv(x) + bias + residual)`. The default adds the bias only.
#[derive(Debug, Clone, Default)]
pub struct Epilogue {
    /// Added before the activation; shaped as the convolution's output.
    pub residual: Option<Tensor>,
    pub activation: Activation,
}

/// The activation of an [`Epilogue`].
#[derive(Debug, Clone, Default)]
pub enum Activation {
    #[default]
    None,
    /// `x` where `x ≥ 0`, else `slope · x` (`nn.LeakyReLU`).
    LeakyRelu(f32),
    /// `x` where `x ≥ 0`, else `slopes[c] · x` with one slope per output channel (`nn.PReLU`).
    PRelu(Tensor),
}

impl Epilogue {
    /// The same epilogue with its residual and slopes in `dtype`.
    pub fn to_dtype(&self, dtype: candle_core::DType) -> Result<Self> {
        Ok(Self {
            residual: self
                .residual
                .as_ref()
                .map(|r| r.to_dtype(dtype))
                .transpose()?,
            activation: match &self.activation {
                Activation::PRelu(slopes) => Activation::PRelu(slopes.to_dtype(dtype)?),
                other => other.clone(),
            },
        })
    }

    /// `activation(conv(x) + bias)`.
    pub fn activation(activation: Activation) -> Self {
        Self {
            residual: None,
            activation,
        }
    }

    /// `LeakyReLU(slope)(conv(x) + bias)`.
    pub fn leaky_relu(slope: f32) -> Self {
        Self::activation(Activation::LeakyRelu(slope))
    }

    /// The same with `residual` added before the activation.
    pub fn with_residual(self, residual: &Tensor) -> Self {
        Self {
            residual: Some(residual.clone()),
            ..self
        }
    }

    /// Checks the residual against the output's shape and the PReLU slopes against its `o`
    /// channels.
    pub fn check(&self, output: &[usize], o: usize) -> Result<()> {
        if let Some(residual) = &self.residual
            && residual.dims() != output
        {
            bail!(
                "conv epilogue: residual {:?} does not match the output {output:?}",
                residual.dims()
            );
        }
        if let Activation::PRelu(slopes) = &self.activation
            && slopes.elem_count() != o
        {
            bail!(
                "conv epilogue: {} PReLU slopes for {o} output channels",
                slopes.elem_count()
            );
        }
        Ok(())
    }

    /// Only the bias: what cuDNN's own bias add does.
    pub fn is_bias_only(&self) -> bool {
        self.residual.is_none() && matches!(self.activation, Activation::None)
    }
}

/// Checks `x [B, H, W, C]`, `weight [O, kh, kw, C]` and `bias [O]` of a channels-last 2-D
/// convolution (`spec`: one tap, its padding and stride) against each other; returns the output
/// shape `[B, H', W', O]`.
pub fn nhwc_output_shape(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    spec: FrameConv,
) -> Result<[usize; 4]> {
    let (b, h, w, c) = x.dims4().map_err(|_| {
        candle_core::Error::Msg(format!(
            "image conv input must be [batch, height, width, channels], got {:?}",
            x.dims()
        ))
    })?;
    let (o, kh, kw, ck) = weight.dims4().map_err(|_| {
        candle_core::Error::Msg(format!(
            "image conv weight must be [out, kh, kw, in], got {:?}",
            weight.dims()
        ))
    })?;
    if spec.taps != 1 || spec.stride_t != 1 {
        bail!("image conv: one tap only, got {spec:?}");
    }
    if ck != c || bias.dims() != [o] {
        bail!(
            "image conv: weight {:?} and bias {:?} do not fit {c} input channels",
            weight.dims(),
            bias.dims()
        );
    }
    Ok([b, spec.out_size(h, kh)?, spec.out_size(w, kw)?, o])
}

/// Where [`scatter_channels`](crate::reference::scatter_channels) copies a channels-last part:
/// into channel `offset` of the channels-last images `[pixels, pitch]` that start `start`
/// elements into the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelSlot {
    pub start: usize,
    pub pitch: usize,
    pub offset: usize,
}

/// At most this many slots per scatter (the kernel's arguments).
pub const MAX_CHANNEL_SLOTS: usize = 4;

impl ChannelSlot {
    /// Checks the channels-last `part [.., C]` against `slots` of the flat `buffer`; returns the
    /// part's pixels and channels.
    pub fn check(buffer: &Tensor, part: &Tensor, slots: &[Self]) -> Result<(usize, usize)> {
        if buffer.rank() != 1 || part.rank() == 0 {
            bail!(
                "scatter channels: the buffer must be flat and the part [.., C], got {:?} and {:?}",
                buffer.dims(),
                part.dims()
            );
        }
        if buffer.dtype() != part.dtype() || !buffer.device().same_device(part.device()) {
            bail!(
                "scatter channels: a {:?} part on {:?} into a {:?} buffer on {:?}",
                part.dtype(),
                part.device(),
                buffer.dtype(),
                buffer.device()
            );
        }
        if slots.is_empty() || slots.len() > MAX_CHANNEL_SLOTS {
            bail!(
                "scatter channels: 1 to {MAX_CHANNEL_SLOTS} slots, got {}",
                slots.len()
            );
        }
        let c = part.dim(part.rank() - 1)?;
        let pixels = part.elem_count().checked_div(c).unwrap_or(0);
        let len = buffer.elem_count();
        for slot in slots {
            if slot.offset + c > slot.pitch || slot.start + pixels * slot.pitch > len {
                bail!(
                    "scatter channels: {pixels} pixels of {c} channels do not fit {slot:?} of a buffer of {len}"
                );
            }
        }
        Ok((pixels, c))
    }

    /// Whether every copy moves whole 16-byte units from 16-byte-aligned addresses (the CUDA
    /// kernel's condition), for elements of `elem` bytes.
    pub fn vectorizes(slots: &[Self], part: &Tensor, elem: usize) -> bool {
        let c = part.dims().last().copied().unwrap_or(0);
        let aligned = |elements: usize| (elements * elem).is_multiple_of(16);
        part.is_contiguous()
            && aligned(c)
            && aligned(part.layout().start_offset())
            && slots
                .iter()
                .all(|s| aligned(s.pitch) && aligned(s.start + s.offset))
    }
}
