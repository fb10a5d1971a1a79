//! Video I/O for the studio: H.264 MP4 files that browsers play (yuv420p, constrained baseline,
//! `moov` first), reading them back to RGB frames, PNG frame dumps, the generation record
//! embedded as MP4 metadata and in PNG stills, tensor <-> frame conversion, and timeline rendering for the stitcher.
//! Pure Rust plus bundled C sources: it must never shell out to ffmpeg or need system libraries.

mod audio;
mod background_writer;
mod frames;
mod h264;
mod mp4;
mod png;
pub mod timeline;

pub use audio::Audio;
pub use background_writer::BackgroundMp4Writer;
pub use frames::{frames_from_tensor, frames_to_tensor, pictures_to_frames, write_png_frames};
pub use h264::{check_encodable_size, level_name, target_bitrate};
pub use mp4::{AudioTrack, FrameIter, METADATA_KEY, Mp4Reader, Mp4Writer};
pub use png::{read_png_metadata, write_png};

use anyhow::{Context, Result, ensure};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a video file holds, read from its container without decoding pictures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoInfo {
    pub width: u32,
    pub height: u32,
    pub frames: usize,
    pub fps: f64,
    /// Seconds.
    pub duration: f64,
    /// RFC 6381 codec string, e.g. `avc1.42C01E`.
    pub codec: String,
    /// The embedded generation record, `null` when the file carries none.
    pub metadata: serde_json::Value,
    /// The sound track's format; `None` for a silent file.
    #[serde(default)]
    pub audio: Option<AudioFormat>,
}

/// A sound track's sample rate and channel count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioFormat {
    pub sample_rate: u32,
    pub channels: u16,
}

/// Every frame of a video plus its timing and embedded record.
#[derive(Debug, Clone)]
pub struct DecodedVideo {
    pub frames: Vec<RgbImage>,
    pub fps: f64,
    pub metadata: serde_json::Value,
}

/// Encodes `frames` as an H.264 MP4 at `path` with `metadata` embedded (atomically: the
/// destination either keeps its old content or gets the complete new file).
pub fn write_mp4(
    path: &Path,
    frames: &[RgbImage],
    fps: u32,
    metadata: &serde_json::Value,
) -> Result<()> {
    write_mp4_with_audio(path, frames, fps, None, metadata)
}

/// [`write_mp4`] with a sound track when `audio` is given.
pub fn write_mp4_with_audio(
    path: &Path,
    frames: &[RgbImage],
    fps: u32,
    audio: Option<&Audio>,
    metadata: &serde_json::Value,
) -> Result<()> {
    (|| {
        let first = frames
            .first()
            .context("a video needs at least one frame, got none")?;
        let size = first.dimensions();
        if let Some((index, frame)) = frames
            .iter()
            .enumerate()
            .find(|(_, f)| f.dimensions() != size)
        {
            anyhow::bail!(
                "frame {index} is {}x{} but frame 0 is {}x{}: every frame must have the same size",
                frame.width(),
                frame.height(),
                size.0,
                size.1
            );
        }
        let mut writer = Mp4Writer::create(path, size.0, size.1, fps)?;
        writer.push_all(frames)?;
        if let Some(audio) = audio {
            writer.set_audio(audio.clone());
        }
        writer.finish(metadata)
    })()
    .with_context(|| format!("writing video {}", path.display()))
}

/// Decodes every frame of an MP4.
pub fn read_mp4(path: &Path) -> Result<DecodedVideo> {
    let mut reader = Mp4Reader::open(path)?;
    let expected = reader.frame_count();
    let frames = reader
        .frames_from(0)?
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("decoding video {}", path.display()))?;
    ensure!(
        frames.len() == expected,
        "decoding video {}: got {} pictures for {expected} samples",
        path.display(),
        frames.len()
    );
    Ok(DecodedVideo {
        frames,
        fps: reader.fps,
        metadata: reader.metadata,
    })
}

/// Reads size, length, codec and metadata from the container only.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    let reader = Mp4Reader::open(path)?;
    Ok(VideoInfo {
        width: reader.width,
        height: reader.height,
        frames: reader.frame_count(),
        fps: reader.fps,
        duration: reader.duration_s,
        codec: reader.codec.clone(),
        metadata: reader.metadata.clone(),
        audio: reader.audio.as_ref().map(|track| AudioFormat {
            sample_rate: track.sample_rate,
            channels: track.channels,
        }),
    })
}

/// Decodes frame `index` (0-based), starting from the nearest keyframe before it.
pub fn extract_frame(path: &Path, index: usize) -> Result<RgbImage> {
    let mut reader = Mp4Reader::open(path)?;
    let frame = reader.frames_from(index)?.next();
    frame
        .with_context(|| format!("frame {index} could not be decoded"))?
        .with_context(|| format!("extracting frame {index} of {}", path.display()))
}

/// The last frame: the start image when a shot continues from a previous clip.
pub fn extract_last_frame(path: &Path) -> Result<RgbImage> {
    let frames = Mp4Reader::open(path)?.frame_count();
    extract_frame(path, frames - 1)
}
