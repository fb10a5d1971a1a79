//! Which kernel sources and attention configuration each GPU generation gets, and the NVRTC
//! architecture each source is compiled for. Pure data and decisions, built without CUDA, so
//! that CI checks them for GPUs it does not have (GB10's sm_121 above all): the CUDA side only
//! asks the device for its compute capability and follows what this module says.

/// A compute capability, `(major, minor)`: `(9, 0)` Hopper, `(12, 1)` GB10 (DGX Spark).
pub type Capability = (i32, i32);

/// Hopper: the only capability that runs `sm_90a` code (wgmma, TMA).
pub const HOPPER: Capability = (9, 0);

/// Largest dynamic shared memory a block may opt into on consumer and DGX Spark Blackwell
/// (sm_120, sm_121): 99 KiB. Every configuration meant for them fits (checked at compile time).
pub const SM12X_MAX_SHARED_BYTES: u32 = 99 * 1024;
/// The same limit on Hopper: 227 KiB.
pub const SM90_MAX_SHARED_BYTES: u32 = 227 * 1024;

/// One kernel source file. `hopper_only` sources use wgmma and build for `sm_90a`, which only
/// compute capability 9.0 runs; every source needs at least `min_capability`.
pub struct Source {
    pub name: &'static str,
    pub code: &'static str,
    pub hopper_only: bool,
    pub min_capability: Capability,
}

/// What the bf16 `mma.sync` kernels need (Ampere).
pub const BF16_MMA: Capability = (8, 0);
/// What `mma.sync` on float8 (e4m3) needs (Ada; Hopper and Blackwell have it).
pub const FP8_MMA: Capability = (8, 9);

macro_rules! source {
    ($name:literal, $file:literal, $hopper_only:expr, $min_capability:expr) => {
        Source {
            name: $name,
            // NVRTC compiles one string without include paths: the shared header goes first.
            code: concat!(
                include_str!("../cuda/common.cuh"),
                include_str!(concat!("../cuda/", $file))
            ),
            hopper_only: $hopper_only,
            min_capability: $min_capability,
        }
    };
}

pub const ATTENTION: Source = source!("attention", "attention.cu", false, BF16_MMA);
pub const ATTENTION_TMA: Source = source!("attention_tma", "attention_tma.cu", true, HOPPER);
pub const NORM: Source = source!("norm", "norm.cu", false, BF16_MMA);
pub const ROPE: Source = source!("rope", "rope.cu", false, BF16_MMA);
pub const LAYOUT: Source = source!("layout", "layout.cu", false, BF16_MMA);
pub const IMAGE: Source = source!("image", "image.cu", false, BF16_MMA);
pub const QUANT: Source = source!("quant", "quant.cu", false, BF16_MMA);
pub const GEMM: Source = source!("gemm", "gemm.cu", false, FP8_MMA);
pub const ALL_SOURCES: [&Source; 8] = [
    &ATTENTION,
    &ATTENTION_TMA,
    &NORM,
    &ROPE,
    &LAYOUT,
    &IMAGE,
    &QUANT,
    &GEMM,
];

/// One compiled configuration of the attention kernel (see `attention.cu`, `attention_tma.cu`).
pub struct AttentionVariant {
    pub name: &'static str,
    pub source: &'static Source,
    pub threads: u32,
    pub block_m: usize,
    pub shared_bytes: u32,
    /// Takes q/k/v as TMA tensor maps instead of pointers and strides.
    pub tensor_maps: bool,
}

// Chosen by measurement (kernels/NOTES.md): on Hopper the TMA-fed warp-specialised wgmma kernel
// (1.01x cuDNN SDPA on H100); elsewhere mma.sync with 8 warps and 64-key tiles.
pub const ATTENTION_TMA_D128: AttentionVariant = AttentionVariant {
    name: "attention_wgmma_tma_d128",
    source: &ATTENTION_TMA,
    threads: 384,
    block_m: 128,
    // Q tile + three K and three V tiles of 128 x 128 bf16, 1024 bytes of alignment slack and
    // seven mbarriers.
    shared_bytes: 7 * 128 * 128 * 2 + 1024 + 7 * 8,
    tensor_maps: true,
};
/// The same kernel on float8 operands (`attention_fp8`): tiles of 128 x 128 bytes.
pub const ATTENTION_FP8_TMA_D128: AttentionVariant = AttentionVariant {
    name: "attention_fp8_wgmma_tma_d128",
    shared_bytes: 7 * 128 * 128 + 1024 + 7 * 8,
    ..ATTENTION_TMA_D128
};
pub const ATTENTION_MMA_D128: AttentionVariant = AttentionVariant {
    name: "attention_mma_d128_w8_n64",
    source: &ATTENTION,
    threads: 256,
    block_m: 128,
    shared_bytes: (128 * 128 + 4 * 64 * 128) * 2,
    tensor_maps: false,
};
pub const ATTENTION_MMA_D64: AttentionVariant = AttentionVariant {
    name: "attention_mma_d64_w8_n64",
    source: &ATTENTION,
    threads: 256,
    block_m: 128,
    shared_bytes: (128 * 64 + 4 * 64 * 64) * 2,
    tensor_maps: false,
};

// The causal attention of language models (attention.cu, `CAUSAL`): mma.sync on every GPU, since
// a prompt of a few thousand tokens gives the TMA kernel's pipeline too little to hide.
pub const ATTENTION_CAUSAL_MMA_D64: AttentionVariant = AttentionVariant {
    name: "attention_causal_mma_d64_w8_n64",
    ..ATTENTION_MMA_D64
};
pub const ATTENTION_CAUSAL_MMA_D128: AttentionVariant = AttentionVariant {
    name: "attention_causal_mma_d128_w8_n64",
    ..ATTENTION_MMA_D128
};
/// Gemma 3's head dim: 4 warps and 32-key tiles.
pub const ATTENTION_CAUSAL_MMA_D256: AttentionVariant = AttentionVariant {
    name: "attention_causal_mma_d256_w4_n32",
    source: &ATTENTION,
    threads: 128,
    block_m: 64,
    shared_bytes: (64 * 256 + 4 * 32 * 256) * 2,
    tensor_maps: false,
};

// The launch configurations' shared memory, checked when this crate compiles: the mma.sync
// variants are what sm_120/sm_121 run, so they must fit GB10's 99 KiB.
const _: () = {
    assert!(ATTENTION_MMA_D128.shared_bytes <= SM12X_MAX_SHARED_BYTES);
    assert!(ATTENTION_MMA_D64.shared_bytes <= SM12X_MAX_SHARED_BYTES);
    assert!(ATTENTION_CAUSAL_MMA_D256.shared_bytes <= SM12X_MAX_SHARED_BYTES);
    assert!(ATTENTION_TMA_D128.shared_bytes <= SM90_MAX_SHARED_BYTES);
};

/// The attention configuration for `head_dim` on a GPU of capability `cc`, if there is one.
pub fn attention_variant(head_dim: usize, cc: Capability) -> Option<&'static AttentionVariant> {
    match (head_dim, cc) {
        (128, HOPPER) => Some(&ATTENTION_TMA_D128),
        (128, _) => Some(&ATTENTION_MMA_D128),
        (64, _) => Some(&ATTENTION_MMA_D64),
        _ => None,
    }
}

/// The causal attention configuration for `head_dim`, the same on every GPU, if there is one.
pub fn causal_attention_variant(head_dim: usize) -> Option<&'static AttentionVariant> {
    match head_dim {
        64 => Some(&ATTENTION_CAUSAL_MMA_D64),
        128 => Some(&ATTENTION_CAUSAL_MMA_D128),
        256 => Some(&ATTENTION_CAUSAL_MMA_D256),
        _ => None,
    }
}

/// The sources a GPU of capability `cc` runs: Hopper-only ones only on Hopper, each only from its
/// minimum capability.
pub fn sources_for(cc: Capability) -> impl Iterator<Item = &'static Source> {
    ALL_SOURCES
        .into_iter()
        .filter(move |s| (cc == HOPPER || !s.hopper_only) && cc >= s.min_capability)
}

/// The NVRTC target for `src` on capability `cc`: its exact architecture (`sm_121` on GB10),
/// `sm_90a` for Hopper-only code; an error for GPUs the kernels do not support.
pub fn arch(cc: Capability, src: &Source) -> Result<String, String> {
    let (major, minor) = cc;
    if major < 8 {
        return Err(format!(
            "the fused kernels need compute capability 8.0 or newer (mma.sync bf16), this GPU is {major}.{minor}"
        ));
    }
    if cc < src.min_capability {
        let (min_major, min_minor) = src.min_capability;
        return Err(format!(
            "kernel module {} needs compute capability {min_major}.{min_minor} or newer, this GPU is {major}.{minor}",
            src.name
        ));
    }
    if src.hopper_only && cc != HOPPER {
        return Err(format!(
            "kernel module {} needs sm_90a (Hopper), this GPU is {major}.{minor}",
            src.name
        ));
    }
    Ok(format!(
        "sm_{major}{minor}{}",
        if src.hopper_only { "a" } else { "" }
    ))
}

/// `sm_121`, `121` or `12.1` as a capability.
pub fn parse_capability(text: &str) -> Result<Capability, String> {
    let digits = text.trim().trim_start_matches("sm_").trim_end_matches('a');
    let bad = || format!("`{text}` is not a compute capability (e.g. sm_121, 121 or 12.1)");
    let (major, minor) = match digits.split_once('.') {
        Some((major, minor)) => (major, minor),
        None if digits.len() >= 2 => digits.split_at(digits.len() - 1),
        None => return Err(bad()),
    };
    Ok((
        major.parse().map_err(|_| bad())?,
        minor.parse().map_err(|_| bad())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB10: Capability = (12, 1);

    #[test]
    fn gb10_gets_the_mma_sync_kernels_and_never_the_hopper_only_ones() {
        for head_dim in [64, 128] {
            let variant = attention_variant(head_dim, GB10).unwrap();
            assert!(!variant.source.hopper_only, "{}", variant.name);
            assert!(!variant.tensor_maps, "{}", variant.name);
            assert!(variant.shared_bytes <= SM12X_MAX_SHARED_BYTES);
        }
        for head_dim in [64, 128, 256] {
            let variant = causal_attention_variant(head_dim).unwrap();
            assert!(!variant.source.hopper_only && !variant.tensor_maps);
            assert!(variant.shared_bytes <= SM12X_MAX_SHARED_BYTES);
        }
        let names: Vec<_> = sources_for(GB10).map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "attention",
                "norm",
                "rope",
                "layout",
                "image",
                "quant",
                "gemm"
            ]
        );
        for src in sources_for(GB10) {
            assert_eq!(arch(GB10, src).unwrap(), "sm_121");
        }
        assert!(
            arch(GB10, &ATTENTION_TMA)
                .unwrap_err()
                .contains("needs sm_90a")
        );
    }

    #[test]
    fn hopper_gets_the_tma_attention_for_head_dim_128() {
        assert_eq!(
            attention_variant(128, HOPPER).unwrap().name,
            "attention_wgmma_tma_d128"
        );
        assert_eq!(arch(HOPPER, &ATTENTION_TMA).unwrap(), "sm_90a");
        assert_eq!(arch(HOPPER, &NORM).unwrap(), "sm_90");
        assert_eq!(sources_for(HOPPER).count(), ALL_SOURCES.len());
        assert!(attention_variant(96, HOPPER).is_none());
        assert!(arch((7, 5), &NORM).unwrap_err().contains("8.0 or newer"));
    }

    #[test]
    fn the_fp8_gemm_needs_ada_or_newer() {
        const AMPERE: Capability = (8, 0);
        assert!(!sources_for(AMPERE).any(|s| s.name == "gemm"));
        assert!(arch(AMPERE, &GEMM).unwrap_err().contains("8.9 or newer"));
        assert_eq!(arch((8, 9), &GEMM).unwrap(), "sm_89");
    }

    #[test]
    fn capabilities_parse_in_every_spelling() {
        for text in ["sm_121", "121", "12.1", "sm_121a"] {
            assert_eq!(parse_capability(text), Ok(GB10), "{text}");
        }
        assert_eq!(parse_capability("sm_90"), Ok(HOPPER));
        assert!(parse_capability("gb10").is_err());
        assert!(parse_capability("1").is_err());
    }
}
