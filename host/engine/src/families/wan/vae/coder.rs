//! The Wan VAE's encoder and decoder stacks, built from the config: the Wan 2.1 layout (plain
//! residual blocks with separate resamplers) and the Wan 2.2 layout (`is_residual`: blocks with
//! average-down / duplicate-up shortcuts around the resampler). Each `forward` processes ONE
//! temporal chunk and relies on the caller's `FeatCache` for the frames before it.

use super::WanVaeConfig;
use super::layers::{
    AttentionBlock, AvgDown3d, CausalConv3d, DupUp3d, FeatCache, Head, MidBlock, Resample,
    ResampleMode, ResidualBlock,
};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

enum DownLayer {
    Residual(ResidualBlock),
    Attention(AttentionBlock),
    Resample(Resample),
    ResidualDown {
        resnets: Vec<ResidualBlock>,
        downsampler: Option<Resample>,
        shortcut: AvgDown3d,
    },
}

pub struct Encoder {
    conv_in: CausalConv3d,
    down: Vec<DownLayer>,
    mid: MidBlock,
    head: Head,
}

fn resnets(vb: &VarBuilder, n: usize, in_dim: usize, out_dim: usize) -> Result<Vec<ResidualBlock>> {
    (0..n)
        .map(|j| ResidualBlock::new(vb.pp(j), if j == 0 { in_dim } else { out_dim }, out_dim))
        .collect()
}

impl Encoder {
    pub fn new(vb: VarBuilder, cfg: &WanVaeConfig, in_channels: usize) -> Result<Self> {
        let dims: Vec<usize> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|u| cfg.base_dim * u)
            .collect();
        let levels = cfg.dim_mult.len();
        let vbd = vb.pp("down_blocks");
        let mut down = Vec::new();
        let mut scale = 1.0;
        for i in 0..levels {
            let (in_dim, out_dim) = (dims[i], dims[i + 1]);
            let last = i == levels - 1;
            let temporal = !last && cfg.temperal_downsample.get(i).copied().unwrap_or(false);
            let mode = if temporal {
                ResampleMode::Downsample3d
            } else {
                ResampleMode::Downsample2d
            };
            if cfg.is_residual {
                let vb = vbd.pp(i);
                down.push(DownLayer::ResidualDown {
                    resnets: resnets(&vb.pp("resnets"), cfg.num_res_blocks, in_dim, out_dim)?,
                    downsampler: if last {
                        None
                    } else {
                        Some(Resample::new(vb.pp("downsampler"), out_dim, mode, out_dim)?)
                    },
                    shortcut: AvgDown3d::new(
                        in_dim,
                        out_dim,
                        if temporal { 2 } else { 1 },
                        if last { 1 } else { 2 },
                    )?,
                });
                continue;
            }
            let mut block_in = in_dim;
            for _ in 0..cfg.num_res_blocks {
                down.push(DownLayer::Residual(ResidualBlock::new(
                    vbd.pp(down.len()),
                    block_in,
                    out_dim,
                )?));
                if cfg.attn_scales.contains(&scale) {
                    down.push(DownLayer::Attention(AttentionBlock::new(
                        vbd.pp(down.len()),
                        out_dim,
                    )?));
                }
                block_in = out_dim;
            }
            if !last {
                down.push(DownLayer::Resample(Resample::new(
                    vbd.pp(down.len()),
                    out_dim,
                    mode,
                    out_dim,
                )?));
                scale /= 2.0;
            }
        }
        let top = dims[levels];
        Ok(Self {
            conv_in: CausalConv3d::new(
                vb.pp("conv_in"),
                in_channels,
                dims[0],
                (3, 3, 3),
                1,
                (1, 1),
            )?,
            down,
            mid: MidBlock::new(vb.pp("mid_block"), top)?,
            head: Head::new(vb, top, 2 * cfg.z_dim)?,
        })
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = self.conv_in.forward_cached(x, cache)?;
        for layer in &self.down {
            x = match layer {
                DownLayer::Residual(block) => block.forward(&x, cache)?,
                DownLayer::Attention(block) => block.forward(&x)?,
                DownLayer::Resample(block) => block.forward(&x, cache)?,
                DownLayer::ResidualDown {
                    resnets,
                    downsampler,
                    shortcut,
                } => {
                    let skip = shortcut.forward(&x)?;
                    let mut h = x;
                    for block in resnets {
                        h = block.forward(&h, cache)?;
                    }
                    if let Some(down) = downsampler {
                        h = down.forward(&h, cache)?;
                    }
                    (h + skip)?
                }
            };
        }
        let x = self.mid.forward(&x, cache)?;
        self.head.forward(&x, cache)
    }
}

struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Resample>,
    /// Wan 2.2 only.
    shortcut: Option<DupUp3d>,
}

pub struct Decoder {
    conv_in: CausalConv3d,
    mid: MidBlock,
    up: Vec<UpBlock>,
    head: Head,
}

impl Decoder {
    pub fn new(vb: VarBuilder, cfg: &WanVaeConfig, out_channels: usize) -> Result<Self> {
        let base = cfg.decoder_base_dim.unwrap_or(cfg.base_dim);
        let levels = cfg.dim_mult.len();
        let dims: Vec<usize> = std::iter::once(cfg.dim_mult[levels - 1])
            .chain(cfg.dim_mult.iter().rev().copied())
            .map(|u| base * u)
            .collect();
        let temperal_upsample: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
        let mut up = Vec::new();
        for i in 0..levels {
            let (mut in_dim, out_dim) = (dims[i], dims[i + 1]);
            if i > 0 && !cfg.is_residual {
                // Wan 2.1's upsamplers halve the channels.
                in_dim /= 2;
            }
            let up_flag = i != levels - 1;
            let temporal = up_flag && temperal_upsample.get(i).copied().unwrap_or(false);
            let mode = if temporal {
                ResampleMode::Upsample3d
            } else {
                ResampleMode::Upsample2d
            };
            let vb = vb.pp("up_blocks").pp(i);
            let resnets = resnets(&vb.pp("resnets"), cfg.num_res_blocks + 1, in_dim, out_dim)?;
            let block = if cfg.is_residual {
                UpBlock {
                    resnets,
                    upsampler: if up_flag {
                        Some(Resample::new(vb.pp("upsampler"), out_dim, mode, out_dim)?)
                    } else {
                        None
                    },
                    shortcut: if up_flag {
                        Some(DupUp3d::new(
                            in_dim,
                            out_dim,
                            if temporal { 2 } else { 1 },
                            2,
                        )?)
                    } else {
                        None
                    },
                }
            } else {
                UpBlock {
                    resnets,
                    upsampler: if up_flag {
                        Some(Resample::new(
                            vb.pp("upsamplers.0"),
                            out_dim,
                            mode,
                            out_dim / 2,
                        )?)
                    } else {
                        None
                    },
                    shortcut: None,
                }
            };
            up.push(block);
        }
        let top = dims[levels];
        Ok(Self {
            conv_in: CausalConv3d::new(vb.pp("conv_in"), cfg.z_dim, dims[0], (3, 3, 3), 1, (1, 1))?,
            mid: MidBlock::new(vb.pp("mid_block"), dims[0])?,
            up,
            head: Head::new(vb, top, out_channels)?,
        })
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache, first_chunk: bool) -> Result<Tensor> {
        let x = self.conv_in.forward_cached(x, cache)?;
        let mut x = self.mid.forward(&x, cache)?;
        for block in &self.up {
            let skip = match &block.shortcut {
                Some(shortcut) => Some(shortcut.forward(&x, first_chunk)?),
                None => None,
            };
            for resnet in &block.resnets {
                x = resnet.forward(&x, cache)?;
            }
            if let Some(upsampler) = &block.upsampler {
                x = upsampler.forward(&x, cache)?;
            }
            if let Some(skip) = skip {
                x = (x + skip)?;
            }
        }
        self.head.forward(&x, cache)
    }
}
