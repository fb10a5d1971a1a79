//! Sound beside the pictures: an in-memory waveform (what LTX-2's vocoder returns), its FLAC
//! coding for the MP4 audio track, WAV export, and the mixing operations the timeline needs.
//!
//! Why FLAC in MP4: Chromium plays it (as it plays AAC and Opus), and it is the one of the three
//! with a pure-Rust encoder (`flacenc`; AAC and Opus encoders are C libraries). Being lossless it
//! also keeps the vocoder's output exactly as generated, at 16 bits, and a stitched piece that
//! re-encodes its clips' sound loses nothing.

use anyhow::{Context, Result, anyhow, bail, ensure};
use candle_core::{DType, Device, Tensor};
use mp4_atom::{Dfla, Encode, FlacMetadataBlock, u24};
use std::path::Path;

/// Bits per sample of the FLAC track: what delivery formats carry, and lossless for them.
const FLAC_BITS: usize = 16;
/// FLAC block size: 4096 samples per frame (the reference encoder's default), one MP4 sample each.
pub(super) const FLAC_BLOCK: usize = 4096;

/// A waveform: `channels` interleaved channels of f32 samples in [-1, 1] at `sample_rate` Hz.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub sample_rate: u32,
    pub channels: u16,
    /// Interleaved: frame `i` is `samples[i * channels .. (i + 1) * channels]`.
    pub samples: Vec<f32>,
}

impl Audio {
    pub fn new(sample_rate: u32, channels: u16, samples: Vec<f32>) -> Result<Self> {
        ensure!(
            (1..=u32::from(u16::MAX)).contains(&sample_rate),
            "audio sample rate {sample_rate} Hz is out of range (1 to 65535 Hz)"
        );
        ensure!(
            (1..=8).contains(&channels),
            "audio with {channels} channels: 1 to 8 are supported"
        );
        ensure!(
            samples.len().is_multiple_of(usize::from(channels)),
            "{} interleaved samples do not divide into {channels} channels",
            samples.len()
        );
        if let Some(i) = samples.iter().position(|s| !s.is_finite()) {
            bail!("audio sample {i} is not a finite number");
        }
        Ok(Self {
            sample_rate,
            channels,
            samples,
        })
    }

    /// `frames` frames of silence.
    pub fn silence(sample_rate: u32, channels: u16, frames: usize) -> Self {
        Self {
            sample_rate,
            channels,
            samples: vec![0.0; frames * usize::from(channels)],
        }
    }

    /// From a waveform tensor `[channels, samples]` (or `[samples]` for mono), as vocoders return.
    pub fn from_tensor(waveform: &Tensor, sample_rate: u32) -> Result<Self> {
        let waveform = match waveform.rank() {
            1 => waveform.unsqueeze(0)?,
            2 => waveform.clone(),
            _ => bail!(
                "a waveform is [channels, samples], got shape {:?}",
                waveform.dims()
            ),
        };
        let channels = u16::try_from(waveform.dim(0)?).context("too many audio channels")?;
        let samples = waveform
            .to_dtype(DType::F32)?
            .t()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Self::new(sample_rate, channels, samples)
    }

    /// The waveform as `[channels, samples]` f32.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let frames = self.frames();
        Ok(
            Tensor::from_slice(&self.samples, (frames, usize::from(self.channels)), device)?
                .t()?
                .contiguous()?,
        )
    }

    /// Samples per channel.
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.channels)
    }

    pub fn duration_s(&self) -> f64 {
        self.frames() as f64 / f64::from(self.sample_rate)
    }

    /// Writes a 32-bit float WAV file (the waveform exactly as generated).
    pub fn write_wav(&self, path: &Path) -> Result<()> {
        let spec = hound::WavSpec {
            channels: self.channels,
            sample_rate: self.sample_rate,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut out = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        {
            let mut writer =
                hound::WavWriter::new(std::io::BufWriter::new(out.as_file_mut()), spec)?;
            for sample in &self.samples {
                writer.write_sample(*sample)?;
            }
            writer.finalize()?;
        }
        out.persist(path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Reads a WAV file (integer or float samples).
    pub fn read_wav(path: &Path) -> Result<Self> {
        let mut reader = hound::WavReader::open(path)
            .with_context(|| format!("reading WAV {}", path.display()))?;
        let spec = reader.spec();
        let samples = match spec.sample_format {
            hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<Vec<_>, _>>()?,
            hound::SampleFormat::Int => {
                let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
                reader
                    .samples::<i32>()
                    .map(|s| s.map(|s| s as f32 * scale))
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        Self::new(spec.sample_rate, spec.channels, samples)
            .with_context(|| format!("reading WAV {}", path.display()))
    }

    /// Codes the waveform as FLAC frames of [`FLAC_BLOCK`] samples: the `dfLa` box of the MP4
    /// sample entry and one byte string per frame (one MP4 sample each).
    pub(super) fn encode_flac(&self) -> Result<(Dfla, Vec<Vec<u8>>)> {
        use flacenc::component::BitRepr;
        // Full scale is 2^15, as the decoder reads it back; +1.0 clips to the largest code.
        let pcm: Vec<i32> = self
            .samples
            .iter()
            .map(|s| (s * 32768.0).round().clamp(-32768.0, 32767.0) as i32)
            .collect();
        let source = flacenc::source::MemSource::from_samples(
            &pcm,
            usize::from(self.channels),
            FLAC_BITS,
            self.sample_rate as usize,
        );
        let config = flacenc::error::Verify::into_verified(flacenc::config::Encoder::default())
            .map_err(|(_, err)| anyhow!("FLAC encoder configuration: {err:?}"))?;
        let stream = flacenc::encode_with_fixed_block_size(&config, source, FLAC_BLOCK)
            .map_err(|err| anyhow!("FLAC encoding failed: {err:?}"))?;
        let frames = (0..stream.frame_count())
            .map(|n| {
                let mut sink = flacenc::bitsink::ByteSink::new();
                stream
                    .frame(n)
                    .expect("n < frame_count")
                    .write(&mut sink)
                    .map_err(|err| anyhow!("writing FLAC frame {n}: {err:?}"))?;
                Ok(sink.into_inner())
            })
            .collect::<Result<Vec<_>>>()?;
        let info = stream.stream_info();
        let u24 = |n: usize| u24::try_from(n as u32).map_err(|_| anyhow!("FLAC frame size {n}"));
        let stream_info = FlacMetadataBlock::StreamInfo {
            minimum_block_size: info.min_block_size() as u16,
            maximum_block_size: info.max_block_size() as u16,
            minimum_frame_size: u24(info.min_frame_size())?,
            maximum_frame_size: u24(info.max_frame_size())?,
            sample_rate: self.sample_rate,
            num_channels_minus_one: (self.channels - 1) as u8,
            bits_per_sample_minus_one: (FLAC_BITS - 1) as u8,
            number_of_interchannel_samples: info.total_samples() as u64,
            md5_checksum: info.md5_digest().to_vec(),
        };
        Ok((
            Dfla {
                blocks: vec![stream_info],
            },
            frames,
        ))
    }

    /// Decodes a FLAC track of an MP4: its `dfLa` box and its samples in order.
    pub(super) fn decode_flac(dfla: &Dfla, frames: &[Vec<u8>]) -> Result<Self> {
        // A dfLa box is a full box (12-byte header) whose body is the stream's metadata blocks
        // verbatim: "fLaC", that body and the frames make the FLAC stream a decoder reads.
        let mut boxed = Vec::new();
        dfla.encode(&mut boxed)
            .context("re-encoding the dfLa box")?;
        let mut bytes =
            Vec::with_capacity(boxed.len() + frames.iter().map(Vec::len).sum::<usize>());
        bytes.extend_from_slice(b"fLaC");
        bytes.extend_from_slice(&boxed[12..]);
        for frame in frames {
            bytes.extend_from_slice(frame);
        }
        let mut reader =
            claxon::FlacReader::new(bytes.as_slice()).context("the FLAC track is malformed")?;
        let info = reader.streaminfo();
        let scale = 1.0 / (1u64 << (info.bits_per_sample - 1)) as f32;
        let samples = reader
            .samples()
            .map(|s| s.map(|s| s as f32 * scale))
            .collect::<Result<Vec<_>, _>>()
            .context("decoding the FLAC track")?;
        Self::new(info.sample_rate, info.channels as u16, samples)
    }

    /// The same sound at `sample_rate` (band-limited, FFT-based: the rates are fixed).
    pub fn resampled(&self, sample_rate: u32) -> Result<Self> {
        use rubato::Resampler;
        if sample_rate == self.sample_rate {
            return Ok(self.clone());
        }
        if self.frames() == 0 {
            return Ok(Self::silence(sample_rate, self.channels, 0));
        }
        let channels = usize::from(self.channels);
        let planar: Vec<Vec<f32>> = (0..channels)
            .map(|c| {
                self.samples
                    .iter()
                    .skip(c)
                    .step_by(channels)
                    .copied()
                    .collect()
            })
            .collect();
        let mut resampler = rubato::FftFixedInOut::<f32>::new(
            self.sample_rate as usize,
            sample_rate as usize,
            1024,
            channels,
        )
        .context("setting up the resampler")?;
        let delay = resampler.output_delay();
        let wanted =
            (self.frames() as u64 * u64::from(sample_rate) / u64::from(self.sample_rate)) as usize;
        // Fixed-size chunks, zeros past the end until the filter's delay is flushed out too.
        let mut out = vec![Vec::with_capacity(delay + wanted + 2048); channels];
        let mut position = 0;
        while out[0].len() < delay + wanted {
            let take = resampler.input_frames_next();
            let chunk: Vec<Vec<f32>> = planar
                .iter()
                .map(|channel| {
                    (position..position + take)
                        .map(|i| channel.get(i).copied().unwrap_or(0.0))
                        .collect()
                })
                .collect();
            for (channel, produced) in out.iter_mut().zip(resampler.process(&chunk, None)?) {
                channel.extend(produced);
            }
            position += take;
        }
        let samples = (delay..delay + wanted)
            .flat_map(|i| out.iter().map(move |channel| channel[i]))
            .collect();
        Self::new(sample_rate, self.channels, samples)
    }

    /// The same sound with `channels` channels: mono is copied to every channel, more channels
    /// are averaged down to mono first.
    pub fn with_channels(&self, channels: u16) -> Result<Self> {
        if channels == self.channels {
            return Ok(self.clone());
        }
        let from = usize::from(self.channels);
        let mono: Vec<f32> = self
            .samples
            .chunks_exact(from)
            .map(|frame| frame.iter().sum::<f32>() / from as f32)
            .collect();
        let samples = mono
            .iter()
            .flat_map(|s| std::iter::repeat_n(*s, usize::from(channels)))
            .collect();
        Self::new(self.sample_rate, channels, samples)
    }

    /// Frames `start..start + len`, padded with silence past the end.
    pub fn slice(&self, start: usize, len: usize) -> Self {
        let channels = usize::from(self.channels);
        let mut out = Self::silence(self.sample_rate, self.channels, len);
        let available = self.frames().saturating_sub(start).min(len);
        out.samples[..available * channels]
            .copy_from_slice(&self.samples[start * channels..(start + available) * channels]);
        out
    }
}
