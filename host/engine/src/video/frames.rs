//! Conversions between RGB frames and the `[F, H, W, 3]` f32 tensors pipelines return, and PNG dumps.

use anyhow::{Context, Result, ensure};
use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use image::RgbImage;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// Quantises `[F, H, W, 3]` values in [0, 1] to 8-bit frames exactly as diffusers does for its
/// numpy outputs: clamp, then `(x * 255).round()` in f32, where numpy rounds halves to even.
pub fn frames_from_tensor(video: &Tensor) -> Result<Vec<RgbImage>> {
    let (frames, height, width, channels) = video.dims4().with_context(|| {
        format!(
            "video tensor must be [frames, height, width, 3], got {:?}",
            video.dims()
        )
    })?;
    ensure!(
        channels == 3,
        "video tensor must have 3 channels last, got shape {:?}",
        video.dims()
    );
    let values = video
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let frame_len = height * width * 3;
    Ok((0..frames)
        .map(|f| {
            let bytes = values[f * frame_len..(f + 1) * frame_len]
                .iter()
                .map(|x| (x.clamp(0.0, 1.0) * 255.0).round_ties_even() as u8)
                .collect();
            RgbImage::from_raw(width as u32, height as u32, bytes)
                .expect("length is height*width*3")
        })
        .collect())
}

/// A decoder's pictures `[C, F, H, W]` in [-1, 1] (any float dtype, any device) as the frames a
/// pipeline returns: f32 `[F, H, W, C]` in [0, 1] on the CPU, `clamp(x / 2 + 0.5, 0, 1)` in f32 as
/// diffusers' postprocessing computes it. Only the decoder's own bytes cross to the host (half as
/// many as f32 for a bf16 decoder); the f32 arithmetic, which gives the same bits on the CPU, runs
/// there on every core.
pub fn pictures_to_frames(pictures: &Tensor) -> Result<Tensor> {
    let (channels, frames, height, width) = pictures.dims4().with_context(|| {
        format!(
            "decoded pictures must be [channels, frames, height, width], got {:?}",
            pictures.dims()
        )
    })?;
    let dtype = match pictures.dtype() {
        DType::BF16 | DType::F32 => pictures.dtype(),
        _ => DType::F32,
    };
    let channels_last = pictures
        .to_dtype(dtype)?
        .permute((1, 2, 3, 0))?
        .contiguous()?;
    let mut values = vec![0f32; channels_last.elem_count()];
    {
        let (storage, layout) = channels_last.storage_and_layout();
        let range = layout.start_offset()..layout.start_offset() + values.len();
        match &*storage {
            Storage::Cpu(CpuStorage::BF16(v)) => {
                postprocess_in_parallel(&v[range], &mut values, |x| x.to_f32())
            }
            Storage::Cpu(CpuStorage::F32(v)) => {
                postprocess_in_parallel(&v[range], &mut values, |x| x)
            }
            #[cfg(feature = "cuda")]
            Storage::Cuda(cuda) => match dtype {
                DType::BF16 => {
                    staged::to_host(cuda, range, &mut values, |x: half::bf16| x.to_f32())?
                }
                _ => staged::to_host(cuda, range, &mut values, |x: f32| x)?,
            },
            _ => anyhow::bail!("decoded pictures on a device this build cannot read back"),
        }
    }
    Ok(Tensor::from_vec(
        values,
        (frames, height, width, channels),
        &Device::Cpu,
    )?)
}

/// CUDA pictures come over a chunk at a time through page-locked memory: a pageable copy of a
/// whole clip (hundreds of MB) runs at a fraction of the link's speed.
#[cfg(feature = "cuda")]
mod staged {
    use anyhow::{Result, anyhow};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, ValidAsZeroBits};
    use candle_core::cuda_backend::{CudaDType, CudaStorage};
    use std::ops::Range;

    /// Elements per staged chunk (32 MiB of f32).
    const CHUNK: usize = 8 << 20;

    /// [`super::postprocess_in_parallel`] over `range` of `storage`, staged.
    pub(super) fn to_host<T>(
        storage: &CudaStorage,
        range: Range<usize>,
        out: &mut [f32],
        to_f32: fn(T) -> f32,
    ) -> Result<()>
    where
        T: CudaDType + DeviceRepr + ValidAsZeroBits + Copy + Sync,
    {
        let driver = |e| anyhow!("copying the decoded pictures to the host: {e:?}");
        let slice = storage.as_cuda_slice::<T>()?;
        let stream = storage.device().cuda_stream();
        let chunk = CHUNK.min(range.len()).max(1);
        // Flags 0: cached, not write-combined, since the CPU reads it. SAFETY: the memory is
        // only touched through `as_mut_slice`, which waits for any work recorded on it.
        let mut staging =
            unsafe { stream.context().alloc_pinned_with_flags::<T>(chunk, 0) }.map_err(driver)?;
        for (start, out) in range.clone().step_by(chunk).zip(out.chunks_mut(chunk)) {
            let view = slice.slice(start..start + out.len());
            // The copy fills its whole destination, so it gets exactly the chunk's length (the
            // last chunk is shorter). Into page-locked memory it is asynchronous: wait for it.
            let host = &mut staging.as_mut_slice().map_err(driver)?[..out.len()];
            stream.memcpy_dtoh(&view, host).map_err(driver)?;
            stream.synchronize().map_err(driver)?;
            super::postprocess_in_parallel(host, out, to_f32);
        }
        Ok(())
    }
}

/// `out[i] = clamp(f32(src[i]) * 0.5 + 0.5, 0, 1)` in chunks on every core (`* 0.5` is exact, so
/// this rounds once, as `x / 2 + 0.5` does).
fn postprocess_in_parallel<T: Copy + Sync>(src: &[T], out: &mut [f32], to_f32: fn(T) -> f32) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = out.len().div_ceil(threads).max(1 << 16);
    std::thread::scope(|scope| {
        for (src, out) in src.chunks(chunk).zip(out.chunks_mut(chunk)) {
            scope.spawn(move || {
                for (o, &x) in out.iter_mut().zip(src) {
                    *o = (to_f32(x) * 0.5 + 0.5).clamp(0.0, 1.0);
                }
            });
        }
    });
}

/// Frames as an f32 `[F, H, W, 3]` tensor in [0, 1] (the inverse of [`frames_from_tensor`]).
pub fn frames_to_tensor(frames: &[RgbImage], device: &Device) -> Result<Tensor> {
    let first = frames.first().context("no frames to convert")?;
    let (width, height) = first.dimensions();
    let mut values = Vec::with_capacity(frames.len() * (width * height * 3) as usize);
    for (index, frame) in frames.iter().enumerate() {
        ensure!(
            frame.dimensions() == (width, height),
            "frame {index} is {}x{} but frame 0 is {width}x{height}",
            frame.width(),
            frame.height()
        );
        values.extend(frame.as_raw().iter().map(|b| f32::from(*b) / 255.0));
    }
    Ok(Tensor::from_vec(
        values,
        (frames.len(), height as usize, width as usize, 3),
        device,
    )?)
}

/// Writes `frame_00000.png`, `frame_00001.png`, ... into `dir` (created if missing); each file
/// appears complete or not at all.
pub fn write_png_frames(dir: &Path, frames: &[RgbImage]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    frames
        .iter()
        .enumerate()
        .map(|(index, frame)| {
            let path = dir.join(format!("frame_{index:05}.png"));
            let mut file = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
            frame
                .write_to(
                    &mut BufWriter::new(file.as_file_mut()),
                    image::ImageFormat::Png,
                )
                .with_context(|| format!("encoding {}", path.display()))?;
            file.persist(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        })
        .collect()
}
