//! Finishing: what turns a generator's 480p/720p clip at 16–24 fps into the delivered piece.
//! Upscalers and RIFE frame interpolation are loaded from the bare state dicts users download
//! (`loader::StateDict`), their architecture read from the keys as spandrel does.

pub mod finish;
pub mod interpolate;
pub mod resample;
pub mod scene_cut;
pub mod upscale;

use crate::loader::StateDict;
use candle_core::{Result, Tensor};

/// A profiled section ([`crate::fused::profile`]) of the finishing models, on the device of `x`.
pub(crate) fn section<T>(
    name: &'static str,
    x: &Tensor,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    crate::fused::profile::section(name, x.device(), f)
}

/// The kind of finishing model a bare state dict holds, read from its keys: what a caller given
/// only a file (`videosdgx model forward --model FILE`) dispatches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Upscaler(upscale::Architecture),
    /// A RIFE v4.x flownet (its version is told apart when it loads).
    Interpolator,
}

impl Kind {
    /// The kind whose keys the state dict has, or an error listing the known ones.
    pub fn detect(dict: &StateDict) -> anyhow::Result<Self> {
        if let Some(architecture) = upscale::Architecture::detect(dict) {
            return Ok(Self::Upscaler(architecture));
        }
        if interpolate::is_rife_flownet(dict) {
            return Ok(Self::Interpolator);
        }
        anyhow::bail!(
            "{}: not a finishing model this build knows; its keys match none of the upscalers ({}) \
             nor a RIFE flownet ({})",
            dict.path().display(),
            upscale::ARCHITECTURES.join(", "),
            interpolate::known_versions()
        )
    }
}
