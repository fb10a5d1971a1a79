//! H.264 encode/decode through OpenH264 (built from its bundled source), in the shapes MP4 needs:
//! length-prefixed access units plus the SPS/PPS that go into `avcC`.
//! Never touches files: the container lives in `mp4.rs`.

use anyhow::{Context, Result, bail, ensure};
use image::RgbImage;
use openh264::OpenH264API;
use openh264::decoder::{Decoder, DecoderConfig};
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Level,
    Profile, RateControlMode, VuiConfig,
};
use openh264::formats::{RgbSliceU8, YUVBuffer, YUVSource};

const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

/// Bits per pixel per frame the encoder aims for, so the bit rate follows the pixel rate:
/// 1080p24 gets about 10 Mbit/s and 4K24 about 40 Mbit/s (what streaming services deliver at
/// those sizes in H.264), a 5 s 832x480 clip at 16 fps stays around a megabyte.
const BITS_PER_PIXEL: f64 = 0.2;
/// Below this the rate control starves small clips of bits.
const MIN_BITRATE_BPS: u32 = 100_000;
/// A keyframe every this many seconds keeps seeking in a browser cheap.
const KEYFRAME_INTERVAL_S: u32 = 2;

/// One encoded picture as an MP4 sample.
pub struct EncodedSample {
    /// NAL units, each prefixed by its 4-byte big-endian length (avcC `length_size` 4).
    pub data: Vec<u8>,
    pub is_keyframe: bool,
}

/// Parameter sets of the stream, stored once in `avcC` rather than in every sample.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ParameterSets {
    pub sps: Vec<u8>,
    pub pps: Vec<u8>,
}

/// Constrained-baseline, yuv420p, BT.601 limited range: the profile every browser decodes.
pub struct H264Encoder {
    encoder: Encoder,
    width: u32,
    height: u32,
    fps: u32,
    params: Option<ParameterSets>,
}

impl H264Encoder {
    pub fn new(width: u32, height: u32, fps: u32) -> Result<Self> {
        check_encodable_size(width, height)?;
        ensure!(fps > 0, "frame rate must be at least 1 fps");
        let level = level_for(width, height, fps)?;
        let config = EncoderConfig::new()
            .profile(Profile::Baseline)
            .level(level.level)
            // Bit-rate mode aims at the target below (`bench encode` on grainy 4K24 frames: 40.9
            // Mbit/s for 39.8 over 2 s); frames are never skipped, so it adjusts quantisers only.
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(target_bitrate(width, height, fps)))
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            // Every input frame must become one output sample: skipping would desync timestamps.
            .skip_frames(false)
            .complexity(Complexity::High)
            .intra_frame_period(IntraFramePeriod::from_num_frames(fps * KEYFRAME_INTERVAL_S))
            // Matches the BT.601 limited-range RGB->YUV conversion OpenH264 applies.
            .vui(VuiConfig::bt601());
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .context("initialising the H.264 encoder")?;
        Ok(Self {
            encoder,
            width,
            height,
            fps,
            params: None,
        })
    }

    /// A new encoder of the same stream, which starts a group of pictures with a keyframe.
    pub fn fresh(&self) -> Result<Self> {
        Self::new(self.width, self.height, self.fps)
    }

    /// Frames per group of pictures: every this many frames is a keyframe, counted from the first.
    pub fn keyframe_period(&self) -> usize {
        (self.fps * KEYFRAME_INTERVAL_S) as usize
    }

    pub fn encode(&mut self, frame: &RgbImage) -> Result<EncodedSample> {
        ensure!(
            frame.dimensions() == (self.width, self.height),
            "frame is {}x{}, but the video is {}x{}: every frame must have the same size",
            frame.width(),
            frame.height(),
            self.width,
            self.height
        );
        let rgb = RgbSliceU8::new(frame.as_raw(), (self.width as usize, self.height as usize));
        let yuv = YUVBuffer::from_rgb8_source(rgb);
        let stream = self.encoder.encode(&yuv).context("H.264 encoding failed")?;
        let is_keyframe = stream.frame_type() == FrameType::IDR;
        let mut data = Vec::new();
        let mut sps = None;
        let mut pps = None;
        for layer in (0..stream.num_layers()).filter_map(|i| stream.layer(i)) {
            for nal in (0..layer.nal_count()).filter_map(|i| layer.nal_unit(i)) {
                let nal = strip_start_code(nal);
                match nal.first().map(|b| b & 0x1f) {
                    Some(NAL_SPS) => sps = Some(nal.to_vec()),
                    Some(NAL_PPS) => pps = Some(nal.to_vec()),
                    Some(_) => {
                        data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                        data.extend_from_slice(nal);
                    }
                    None => {}
                }
            }
        }
        if let (Some(sps), Some(pps)) = (sps, pps) {
            // ConstantId strategy: later IDRs repeat identical sets, so the first pair describes the stream.
            self.params.get_or_insert(ParameterSets { sps, pps });
        }
        ensure!(
            !data.is_empty(),
            "the H.264 encoder produced no picture for a frame"
        );
        Ok(EncodedSample { data, is_keyframe })
    }

    pub fn parameter_sets(&self) -> Option<&ParameterSets> {
        self.params.as_ref()
    }
}

/// The bit rate the encoder aims for at this size and frame rate, in bits per second.
pub fn target_bitrate(width: u32, height: u32, fps: u32) -> u32 {
    let bits = f64::from(width) * f64::from(height) * f64::from(fps) * BITS_PER_PIXEL;
    (bits as u32).max(MIN_BITRATE_BPS)
}

/// An H.264 level with the limits (Table A-1) that decide it.
struct LevelLimits {
    level: Level,
    name: &'static str,
    /// Macroblocks per second.
    max_mb_rate: u64,
    /// Macroblocks per frame.
    max_frame_mbs: u64,
}

/// Every level OpenH264 encodes, smallest first: a stream declares the lowest one its size and
/// rate fit, so decoders (browsers' hardware ones above all) accept it; 4K24 and 4K30 are 5.1.
const LEVELS: [LevelLimits; 9] = [
    LevelLimits {
        level: Level::Level_3_0,
        name: "3.0",
        max_mb_rate: 40_500,
        max_frame_mbs: 1_620,
    },
    LevelLimits {
        level: Level::Level_3_1,
        name: "3.1",
        max_mb_rate: 108_000,
        max_frame_mbs: 3_600,
    },
    LevelLimits {
        level: Level::Level_3_2,
        name: "3.2",
        max_mb_rate: 216_000,
        max_frame_mbs: 5_120,
    },
    LevelLimits {
        level: Level::Level_4_0,
        name: "4.0",
        max_mb_rate: 245_760,
        max_frame_mbs: 8_192,
    },
    LevelLimits {
        level: Level::Level_4_1,
        name: "4.1",
        max_mb_rate: 245_760,
        max_frame_mbs: 8_192,
    },
    LevelLimits {
        level: Level::Level_4_2,
        name: "4.2",
        max_mb_rate: 522_240,
        max_frame_mbs: 8_704,
    },
    LevelLimits {
        level: Level::Level_5_0,
        name: "5.0",
        max_mb_rate: 589_824,
        max_frame_mbs: 22_080,
    },
    LevelLimits {
        level: Level::Level_5_1,
        name: "5.1",
        max_mb_rate: 983_040,
        max_frame_mbs: 36_864,
    },
    LevelLimits {
        level: Level::Level_5_2,
        name: "5.2",
        max_mb_rate: 2_073_600,
        max_frame_mbs: 36_864,
    },
];

/// The lowest level that holds `width`x`height` at `fps`; an error past level 5.2 (4K above
/// 60 fps), the most OpenH264 encodes.
fn level_for(width: u32, height: u32, fps: u32) -> Result<&'static LevelLimits> {
    let frame_mbs = u64::from(width.div_ceil(16)) * u64::from(height.div_ceil(16));
    let mb_rate = frame_mbs * u64::from(fps);
    LEVELS
        .iter()
        .find(|l| frame_mbs <= l.max_frame_mbs && mb_rate <= l.max_mb_rate)
        .with_context(|| {
            format!(
                "{width}x{height} at {fps} fps is more than H.264 level 5.2 holds \
                 ({} macroblocks per second, at most 2073600): lower the frame rate or the size",
                mb_rate
            )
        })
}

/// The H.264 level a `width`x`height` stream at `fps` declares, e.g. `5.1` for 4K24.
pub fn level_name(width: u32, height: u32, fps: u32) -> Result<&'static str> {
    level_for(width, height, fps).map(|l| l.name)
}

/// H.264 4:2:0 crops in units of two pixels, so an odd size cannot be represented exactly;
/// refusing it is better than silently growing the picture.
pub fn check_encodable_size(width: u32, height: u32) -> Result<()> {
    ensure!(
        width > 0 && height > 0,
        "frame size {width}x{height} is empty"
    );
    ensure!(
        width.is_multiple_of(2) && height.is_multiple_of(2),
        "frame size {width}x{height} is odd: H.264 yuv420p needs an even width and height \
         (resize or crop the frames to e.g. {}x{})",
        width & !1,
        height & !1
    );
    ensure!(
        width.max(height) <= 3840 && width.min(height) <= 2160,
        "frame size {width}x{height} exceeds the H.264 encoder's 3840x2160 limit"
    );
    Ok(())
}

fn strip_start_code(nal: &[u8]) -> &[u8] {
    if let Some(rest) = nal.strip_prefix(&[0, 0, 0, 1]) {
        rest
    } else if let Some(rest) = nal.strip_prefix(&[0, 0, 1]) {
        rest
    } else {
        nal
    }
}

/// Decodes length-prefixed MP4 samples to RGB frames.
pub struct H264Decoder {
    decoder: Decoder,
    length_size: usize,
    annex_b: Vec<u8>,
}

impl H264Decoder {
    pub fn new(params: &ParameterSets, length_size: u8) -> Result<Self> {
        ensure!(
            matches!(length_size, 1 | 2 | 4),
            "avcC declares a NAL length size of {length_size} bytes (must be 1, 2 or 4)"
        );
        let mut decoder =
            Decoder::with_api_config(OpenH264API::from_source(), DecoderConfig::new())
                .context("initialising the H.264 decoder")?;
        let mut headers = Vec::new();
        for nal in [&params.sps, &params.pps] {
            headers.extend_from_slice(&[0, 0, 0, 1]);
            headers.extend_from_slice(nal);
        }
        decoder
            .decode(&headers)
            .context("the stream's SPS/PPS could not be decoded")?;
        Ok(Self {
            decoder,
            length_size: length_size.into(),
            annex_b: Vec::new(),
        })
    }

    /// Decodes one sample; `None` while the decoder is still buffering.
    pub fn decode(&mut self, sample: &[u8]) -> Result<Option<RgbImage>> {
        self.annex_b.clear();
        let mut rest = sample;
        while !rest.is_empty() {
            ensure!(
                rest.len() >= self.length_size,
                "sample ends inside a NAL length prefix"
            );
            let (len_bytes, tail) = rest.split_at(self.length_size);
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            ensure!(
                len <= tail.len(),
                "NAL unit of {len} bytes overruns its {}-byte sample",
                sample.len()
            );
            self.annex_b.extend_from_slice(&[0, 0, 0, 1]);
            self.annex_b.extend_from_slice(&tail[..len]);
            rest = &tail[len..];
        }
        let picture = self
            .decoder
            .decode(&self.annex_b)
            .context("corrupt H.264 sample")?;
        Ok(picture.map(|yuv| to_rgb(&yuv)))
    }

    /// Pictures still held for reordering once every sample was fed.
    pub fn flush(&mut self) -> Result<Vec<RgbImage>> {
        let frames = self
            .decoder
            .flush_remaining()
            .context("flushing the H.264 decoder")?;
        Ok(frames.iter().map(to_rgb).collect())
    }
}

fn to_rgb(yuv: &openh264::decoder::DecodedYUV<'_>) -> RgbImage {
    let (width, height) = yuv.dimensions();
    let mut rgb = vec![0u8; width * height * 3];
    yuv.write_rgb8(&mut rgb);
    RgbImage::from_raw(width as u32, height as u32, rgb).expect("buffer sized from the picture")
}

/// `avc1.PPCCLL`: the RFC 6381 codec string browsers use in `canPlayType`.
pub fn codec_string(sps: &[u8]) -> Result<String> {
    if sps.len() < 4 {
        bail!("SPS is {} bytes, too short to name a profile", sps.len());
    }
    Ok(format!("avc1.{:02X}{:02X}{:02X}", sps[1], sps[2], sps[3]))
}
