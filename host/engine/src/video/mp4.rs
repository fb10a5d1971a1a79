//! The MP4 container for one H.264 video track and an optional FLAC audio track: a streaming
//! writer that puts `moov` before `mdat` (browsers can play and seek before the download ends)
//! and a reader that walks the sample tables, reading one sample at a time. Generation parameters travel as a
//! QuickTime `mdta`-keyed metadata item (`com.videosdgx.generation`) holding JSON.
//! The writer never leaves a partial file at the destination: it assembles a temporary file
//! beside it and renames it into place.

use super::audio::{Audio, FLAC_BLOCK};
use super::h264::{EncodedSample, H264Decoder, H264Encoder, ParameterSets, codec_string};
use anyhow::{Context, Result, bail, ensure};
use image::RgbImage;
use mp4_atom::{
    Atom, Avc1, Avcc, Co64, Codec, Dfla, Dinf, Dref, DrefEntry, Encode, FixedPoint, Flac, FourCC,
    Ftyp, Hdlr, Header, IlstData, IlstDataValue, KeyEntry, Keys, Mdhd, Mdia, Meta, Minf, Moov,
    Mvhd, ReadFrom, Smhd, Stbl, Stco, Stsc, StscEntry, Stsd, Stss, Stsz, StszSamples, Stts,
    SttsEntry, Tkhd, Trak, Url, Visual, Vmhd,
};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Key of the metadata item that carries the generation record.
pub const METADATA_KEY: &str = "com.videosdgx.generation";
/// Media timescale units per frame: a finer clock than the frame rate keeps durations exact.
const TICKS_PER_FRAME: u32 = 1000;
/// Movie (mvhd/tkhd) timescale: milliseconds.
const MOVIE_TIMESCALE: u32 = 1000;
/// A `moov` larger than this is not a video this studio made or can use.
const MAX_MOOV_BYTES: u64 = 256 << 20;

/// Encodes frames one at a time into an MP4 at `path`; nothing appears there until `finish`.
pub struct Mp4Writer {
    path: PathBuf,
    encoder: H264Encoder,
    /// Encoded samples are spooled here so memory stays flat however long the video is.
    payload: BufWriter<File>,
    payload_len: u64,
    sample_sizes: Vec<u32>,
    keyframes: Vec<u32>,
    width: u32,
    height: u32,
    fps: u32,
    audio: Option<Audio>,
}

impl Mp4Writer {
    pub fn create(path: &Path, width: u32, height: u32, fps: u32) -> Result<Self> {
        let encoder = H264Encoder::new(width, height, fps)?;
        let dir = parent_dir(path);
        let payload = tempfile::tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            encoder,
            payload: BufWriter::new(payload),
            payload_len: 0,
            sample_sizes: Vec::new(),
            keyframes: Vec::new(),
            width,
            height,
            fps,
            audio: None,
        })
    }

    /// Gives the video a sound track (coded as FLAC when the file is finished).
    pub fn set_audio(&mut self, audio: Audio) {
        self.audio = Some(audio);
    }

    pub fn push(&mut self, frame: &RgbImage) -> Result<()> {
        let index = self.sample_sizes.len();
        let sample = self
            .encoder
            .encode(frame)
            .with_context(|| format!("frame {index}"))?;
        self.append(sample)
    }

    /// Encodes `frames` after those already pushed into the stream that [`push`](Self::push)ing
    /// them one by one would make (the same keyframes), with runs of whole groups of pictures
    /// coded on all cores at once: a group starts with a keyframe, so groups need nothing from
    /// each other. The encoder of the last run carries on, so `push` may follow.
    pub fn push_all(&mut self, frames: &[RgbImage]) -> Result<()> {
        let period = self.keyframe_period();
        let written = self.frames_written();
        // The frames before the next group boundary belong to the group being coded.
        let head = ((period - written % period) % period).min(frames.len());
        for frame in &frames[..head] {
            self.push(frame)?;
        }
        let rest = &frames[head..];
        if rest.is_empty() {
            return Ok(());
        }
        let groups = rest.len().div_ceil(period);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let run_len = groups.div_ceil(threads.min(groups)) * period;
        let template = &self.encoder;
        let coded = std::thread::scope(|scope| {
            let runs: Vec<_> = rest
                .chunks(run_len)
                .enumerate()
                .map(|(run, frames)| {
                    let first = written + head + run * run_len;
                    scope.spawn(move || -> Result<(H264Encoder, Vec<EncodedSample>)> {
                        let mut encoder = template.fresh()?;
                        let samples = frames
                            .iter()
                            .enumerate()
                            .map(|(i, f)| {
                                encoder
                                    .encode(f)
                                    .with_context(|| format!("frame {}", first + i))
                            })
                            .collect::<Result<_>>()?;
                        Ok((encoder, samples))
                    })
                })
                .collect();
            runs.into_iter()
                .map(|run| {
                    run.join()
                        .map_err(|_| anyhow::anyhow!("an H.264 encoder thread panicked"))?
                })
                .collect::<Result<Vec<_>>>()
        })?;
        for (encoder, samples) in coded {
            // Same configuration, so the same SPS/PPS; `avcC` holds one pair for the stream.
            if let (Some(ours), Some(theirs)) =
                (self.encoder.parameter_sets(), encoder.parameter_sets())
            {
                ensure!(
                    ours == theirs,
                    "the parallel H.264 encoders wrote different parameter sets"
                );
            }
            for sample in samples {
                self.append(sample)?;
            }
            self.encoder = encoder;
        }
        Ok(())
    }

    fn append(&mut self, sample: EncodedSample) -> Result<()> {
        let index = self.sample_sizes.len();
        let EncodedSample { data, is_keyframe } = sample;
        self.payload
            .write_all(&data)
            .context("spooling encoded video")?;
        self.payload_len += data.len() as u64;
        self.sample_sizes
            .push(u32::try_from(data.len()).context("encoded frame over 4 GiB")?);
        if is_keyframe {
            self.keyframes.push(index as u32 + 1);
        }
        Ok(())
    }

    pub fn frames_written(&self) -> usize {
        self.sample_sizes.len()
    }

    /// Frames from one keyframe to the next.
    pub(super) fn keyframe_period(&self) -> usize {
        self.encoder.keyframe_period()
    }

    /// Bytes of one RGB frame.
    pub(super) fn frame_bytes(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }

    /// Writes `ftyp`, `moov` and `mdat` to a temporary file beside the destination, then renames it.
    pub fn finish(self, metadata: &serde_json::Value) -> Result<()> {
        ensure!(
            !self.sample_sizes.is_empty(),
            "a video needs at least one frame, got none"
        );
        let params = self
            .encoder
            .parameter_sets()
            .context("the H.264 encoder emitted no SPS/PPS")?
            .clone();
        let ftyp = encode_atom(&Ftyp {
            major_brand: FourCC::new(b"isom"),
            minor_version: 512,
            compatible_brands: [b"isom", b"iso2", b"avc1", b"mp41"]
                .map(FourCC::new)
                .to_vec(),
        })?;
        let audio = match &self.audio {
            Some(audio) => Some(audio.encode_flac().context("coding the sound track")?),
            None => None,
        };
        let audio_len: u64 = audio
            .iter()
            .flat_map(|(_, frames)| frames)
            .map(|f| f.len() as u64)
            .sum();
        let mdat_header = encode_atom_header(b"mdat", self.payload_len + audio_len)?;
        // Chunk offsets depend on the size of `moov`, which does not depend on their values.
        let large = self.payload_len + audio_len + (64 << 20) > u64::from(u32::MAX);
        let moov = |data_start| self.moov(&params, metadata, audio.as_ref(), data_start, large);
        let probe = encode_atom(&moov(0)?)?;
        let data_start = (ftyp.len() + probe.len() + mdat_header.len()) as u64;
        let moov = encode_atom(&moov(data_start)?)?;
        debug_assert_eq!(moov.len(), probe.len());

        let mut payload = self.payload.into_inner().map_err(|e| e.into_error())?;
        payload.seek(SeekFrom::Start(0))?;
        let dir = parent_dir(&self.path);
        let mut out = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        {
            let mut writer = BufWriter::new(out.as_file_mut());
            writer.write_all(&ftyp)?;
            writer.write_all(&moov)?;
            writer.write_all(&mdat_header)?;
            std::io::copy(&mut payload, &mut writer)?;
            for frame in audio.iter().flat_map(|(_, frames)| frames) {
                writer.write_all(frame)?;
            }
            writer.flush()?;
        }
        out.as_file().sync_all()?;
        out.persist(&self.path)
            .with_context(|| format!("moving the finished video to {}", self.path.display()))?;
        Ok(())
    }

    fn moov(
        &self,
        params: &ParameterSets,
        metadata: &serde_json::Value,
        audio: Option<&(Dfla, Vec<Vec<u8>>)>,
        data_start: u64,
        large: bool,
    ) -> Result<Moov> {
        let frames = self.sample_sizes.len() as u64;
        let media_timescale = self.fps * TICKS_PER_FRAME;
        let video_duration = frames * u64::from(MOVIE_TIMESCALE) / u64::from(self.fps);
        let mut offsets = Vec::with_capacity(self.sample_sizes.len());
        let mut offset = data_start;
        for size in &self.sample_sizes {
            offsets.push(offset);
            offset += u64::from(*size);
        }
        let avc1 = Avc1 {
            visual: Visual {
                data_reference_index: 1,
                width: self.width as u16,
                height: self.height as u16,
                compressor: "VideosDGX H.264".into(),
                ..Visual::default()
            },
            avcc: Avcc::new(&params.sps, &params.pps).context("building avcC")?,
            ..Avc1::default()
        };
        let stbl = Stbl {
            stsd: Stsd {
                codecs: vec![Codec::Avc1(avc1)],
            },
            stts: Stts {
                entries: vec![SttsEntry {
                    sample_count: frames as u32,
                    sample_delta: TICKS_PER_FRAME,
                }],
            },
            stss: Some(Stss {
                entries: self.keyframes.clone(),
            }),
            // One sample per chunk.
            stsc: Stsc {
                entries: vec![StscEntry {
                    first_chunk: 1,
                    samples_per_chunk: 1,
                    sample_description_index: 1,
                }],
            },
            stsz: Stsz {
                samples: StszSamples::Different {
                    sizes: self.sample_sizes.clone(),
                },
            },
            ..chunk_offsets(offsets, large)
        };
        let minf = Minf {
            vmhd: Some(Vmhd::default()),
            ..Minf::default()
        };
        let mut video = track(
            1,
            (b"vide", "VideoHandler"),
            media_timescale,
            frames * u64::from(TICKS_PER_FRAME),
            video_duration,
            minf,
            stbl,
        );
        video.tkhd.width = FixedPoint::new(self.width as u16, 0);
        video.tkhd.height = FixedPoint::new(self.height as u16, 0);
        let mut traks = vec![video];
        let mut movie_duration = video_duration;
        if let (Some((dfla, flac_frames)), Some(sound)) = (audio, &self.audio) {
            let samples = sound.frames() as u64;
            let duration = samples * u64::from(MOVIE_TIMESCALE) / u64::from(sound.sample_rate);
            movie_duration = movie_duration.max(duration);
            let block = FLAC_BLOCK as u64;
            let mut stts = vec![SttsEntry {
                sample_count: (samples / block) as u32,
                sample_delta: FLAC_BLOCK as u32,
            }];
            if !samples.is_multiple_of(block) {
                stts.push(SttsEntry {
                    sample_count: 1,
                    sample_delta: (samples % block) as u32,
                });
            }
            stts.retain(|e| e.sample_count > 0);
            let flac = Flac {
                audio: mp4_atom::Audio {
                    data_reference_index: 1,
                    channel_count: sound.channels,
                    sample_size: 16,
                    sample_rate: FixedPoint::new(sound.sample_rate as u16, 0),
                },
                dfla: dfla.clone(),
            };
            // The sound follows the pictures in `mdat`, as one chunk.
            let stbl = Stbl {
                stsd: Stsd {
                    codecs: vec![Codec::Flac(flac)],
                },
                stts: Stts { entries: stts },
                stsc: Stsc {
                    entries: vec![StscEntry {
                        first_chunk: 1,
                        samples_per_chunk: flac_frames.len() as u32,
                        sample_description_index: 1,
                    }],
                },
                stsz: Stsz {
                    samples: StszSamples::Different {
                        sizes: flac_frames.iter().map(|f| f.len() as u32).collect(),
                    },
                },
                ..chunk_offsets(vec![offset], large)
            };
            let minf = Minf {
                smhd: Some(Smhd::default()),
                ..Minf::default()
            };
            let mut sound_track = track(
                2,
                (b"soun", "SoundHandler"),
                sound.sample_rate,
                samples,
                duration,
                minf,
                stbl,
            );
            sound_track.tkhd.volume = FixedPoint::new(1, 0);
            traks.push(sound_track);
        }
        Ok(Moov {
            mvhd: Mvhd {
                timescale: MOVIE_TIMESCALE,
                duration: movie_duration,
                rate: FixedPoint::new(1, 0),
                volume: FixedPoint::new(1, 0),
                next_track_id: traks.len() as u32 + 1,
                ..Mvhd::default()
            },
            meta: Some(metadata_box(metadata)?),
            trak: traks,
            ..Moov::default()
        })
    }
}

/// The chunk offset table: 32-bit (`stco`) unless the file may pass 4 GiB (`co64`).
fn chunk_offsets(offsets: Vec<u64>, large: bool) -> Stbl {
    let (stco, co64) = if large {
        (None, Some(Co64 { entries: offsets }))
    } else {
        let entries = offsets.into_iter().map(|o| o as u32).collect();
        (Some(Stco { entries }), None)
    };
    Stbl {
        stco,
        co64,
        ..Stbl::default()
    }
}

/// A track: `media_duration` in its own `timescale`, `movie_duration` in the movie's.
fn track(
    track_id: u32,
    (handler, name): (&[u8; 4], &str),
    timescale: u32,
    media_duration: u64,
    movie_duration: u64,
    minf: Minf,
    stbl: Stbl,
) -> Trak {
    Trak {
        tkhd: Tkhd {
            track_id,
            duration: movie_duration,
            enabled: true,
            in_movie: true,
            ..Tkhd::default()
        },
        mdia: Mdia {
            mdhd: Mdhd {
                timescale,
                duration: media_duration,
                language: "und".into(),
                ..Mdhd::default()
            },
            hdlr: Hdlr {
                handler: FourCC::new(handler),
                name: name.into(),
            },
            minf: Minf {
                dinf: Dinf {
                    dref: Dref {
                        entries: vec![DrefEntry::Url(Url {
                            location: String::new(),
                        })],
                    },
                },
                stbl,
                ..minf
            },
        },
        ..Trak::default()
    }
}

fn metadata_box(metadata: &serde_json::Value) -> Result<Meta> {
    let mut meta = Meta {
        hdlr: Hdlr {
            handler: FourCC::new(b"mdta"),
            name: String::new(),
        },
        items: Vec::new(),
    };
    meta.push(Keys {
        entries: vec![KeyEntry {
            key_namespace: FourCC::new(b"mdta"),
            key_value: METADATA_KEY.to_string(),
        }],
    });
    meta.push(mp4_atom::Ilst {
        mdta: vec![(
            1,
            IlstData {
                country_indicator: 0,
                language_indicator: 0,
                value: IlstDataValue::Utf8(serde_json::to_string(metadata)?),
            },
        )],
        ..Default::default()
    });
    Ok(meta)
}

fn read_metadata(moov: &Moov) -> Result<serde_json::Value> {
    let Some(meta) = &moov.meta else {
        return Ok(serde_json::Value::Null);
    };
    let (Some(keys), Some(ilst)) = (meta.get::<Keys>(), meta.get::<mp4_atom::Ilst>()) else {
        return Ok(serde_json::Value::Null);
    };
    let Some(position) = keys
        .entries
        .iter()
        .position(|k| k.key_value == METADATA_KEY)
    else {
        return Ok(serde_json::Value::Null);
    };
    let index = position as u32 + 1;
    match ilst
        .mdta
        .iter()
        .find(|(i, _)| *i == index)
        .map(|(_, data)| &data.value)
    {
        Some(IlstDataValue::Utf8(json)) => serde_json::from_str(json)
            .with_context(|| format!("metadata item {METADATA_KEY} is not valid JSON")),
        Some(_) => bail!("metadata item {METADATA_KEY} is not UTF-8 text"),
        None => Ok(serde_json::Value::Null),
    }
}

fn encode_atom<T: Atom>(atom: &T) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    atom.encode(&mut buf)
        .with_context(|| format!("encoding the {} box", T::KIND))?;
    Ok(buf)
}

fn encode_atom_header(kind: &[u8; 4], body_len: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    Header {
        kind: FourCC::new(kind),
        size: Some(body_len as usize),
    }
    .encode(&mut buf)?;
    Ok(buf)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The video track of an MP4, ready to read sample by sample.
pub struct Mp4Reader {
    file: BufReader<File>,
    /// (file offset, size) of every sample in decode order.
    samples: Vec<(u64, u32)>,
    /// 0-based indices of sync samples; `None` means every sample is one.
    keyframes: Option<Vec<usize>>,
    params: ParameterSets,
    length_size: u8,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub duration_s: f64,
    pub codec: String,
    pub metadata: serde_json::Value,
    /// The sound track, when the file has one.
    pub audio: Option<AudioTrack>,
}

/// An MP4's sound track: where its samples lie and how to decode them.
pub struct AudioTrack {
    pub sample_rate: u32,
    pub channels: u16,
    pub duration_s: f64,
    /// `flac`, or the sample entry's four-character code of a codec this reader cannot decode.
    pub codec: String,
    dfla: Option<Dfla>,
    samples: Vec<(u64, u32)>,
}

impl Mp4Reader {
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_inner(path).with_context(|| format!("reading video {}", path.display()))
    }

    fn open_inner(path: &Path) -> Result<Self> {
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let mut file = BufReader::new(file);
        let moov = find_moov(&mut file, file_len)?;
        let trak = moov
            .trak
            .iter()
            .find(|t| t.mdia.hdlr.handler == FourCC::new(b"vide"))
            .context("the file has no video track")?;
        let stbl = &trak.mdia.minf.stbl;
        let (avcc, visual) = match stbl.stsd.codecs.first() {
            Some(Codec::Avc1(avc1)) => (&avc1.avcc, &avc1.visual),
            Some(Codec::Avc3(avc3)) => (&avc3.avcc, &avc3.visual),
            Some(other) => bail!(
                "the video track is {}, only H.264 (avc1) can be decoded",
                codec_name(other)
            ),
            None => bail!("the video track has no sample description"),
        };
        let (Some(sps), Some(pps)) = (
            avcc.sequence_parameter_sets.first(),
            avcc.picture_parameter_sets.first(),
        ) else {
            bail!("the avcC box carries no SPS/PPS")
        };
        let params = ParameterSets {
            sps: sps.clone(),
            pps: pps.clone(),
        };
        let samples = sample_locations(stbl)?;
        ensure!(!samples.is_empty(), "the video track has no frames");
        if let Some((i, (offset, size))) = samples
            .iter()
            .enumerate()
            .find(|(_, (o, s))| o + u64::from(*s) > file_len)
        {
            bail!(
                "the file is truncated: frame {i} lies at bytes {offset}..{} but the file has {file_len} bytes",
                offset + u64::from(*size)
            );
        }
        let audio = match moov
            .trak
            .iter()
            .find(|t| t.mdia.hdlr.handler == FourCC::new(b"soun"))
        {
            Some(trak) => Some(audio_track(trak, file_len).context("the sound track")?),
            None => None,
        };
        let duration_s = track_seconds(trak).context("the video track")?;
        ensure!(duration_s > 0.0, "the video track has zero duration");
        Ok(Self {
            fps: samples.len() as f64 / duration_s,
            keyframes: stbl.stss.as_ref().map(|s| {
                s.entries
                    .iter()
                    .map(|e| e.saturating_sub(1) as usize)
                    .collect()
            }),
            samples,
            codec: codec_string(&params.sps)?,
            metadata: read_metadata(&moov)?,
            params,
            length_size: avcc.length_size,
            width: visual.width.into(),
            height: visual.height.into(),
            duration_s,
            audio,
            file,
        })
    }

    /// Decodes the whole sound track; `None` when the file has none.
    pub fn read_audio(&mut self) -> Result<Option<Audio>> {
        let Some(track) = &self.audio else {
            return Ok(None);
        };
        let Some(dfla) = &track.dfla else {
            bail!(
                "the sound track is coded as {}; this reader decodes FLAC only",
                track.codec
            );
        };
        let mut frames = Vec::with_capacity(track.samples.len());
        for (i, (offset, size)) in track.samples.iter().enumerate() {
            let mut frame = vec![0u8; *size as usize];
            self.file.seek(SeekFrom::Start(*offset))?;
            self.file
                .read_exact(&mut frame)
                .with_context(|| format!("reading sound sample {i}"))?;
            frames.push(frame);
        }
        Audio::decode_flac(dfla, &frames).map(Some)
    }

    pub fn frame_count(&self) -> usize {
        self.samples.len()
    }

    /// The frames decoding can start from (every frame when the file marks none).
    pub fn keyframes(&self) -> Vec<usize> {
        match &self.keyframes {
            Some(keys) => keys.clone(),
            None => (0..self.samples.len()).collect(),
        }
    }

    /// Decodes frames `start..` in order; decoding starts at the nearest keyframe before `start`.
    pub fn frames_from(&mut self, start: usize) -> Result<FrameIter<'_>> {
        ensure!(
            start < self.samples.len(),
            "frame {start} is out of range: the video has {} frames",
            self.samples.len()
        );
        let keyframe = match &self.keyframes {
            Some(keys) => keys
                .iter()
                .copied()
                .filter(|k| *k <= start)
                .max()
                .unwrap_or(0),
            None => start,
        };
        let decoder = H264Decoder::new(&self.params, self.length_size)?;
        Ok(FrameIter {
            reader: self,
            decoder,
            next_sample: keyframe,
            skip: start - keyframe,
            pending: Vec::new(),
            buf: Vec::new(),
        })
    }

    fn read_sample(&mut self, index: usize, buf: &mut Vec<u8>) -> Result<()> {
        let (offset, size) = self.samples[index];
        buf.resize(size as usize, 0);
        self.file.seek(SeekFrom::Start(offset))?;
        self.file
            .read_exact(buf)
            .with_context(|| format!("reading frame {index}"))?;
        Ok(())
    }
}

/// Decoded frames in presentation order for streams without reordering (what this studio writes).
pub struct FrameIter<'a> {
    reader: &'a mut Mp4Reader,
    decoder: H264Decoder,
    next_sample: usize,
    /// Frames decoded only as references before the requested start.
    skip: usize,
    /// Pictures released by the final flush, oldest last.
    pending: Vec<RgbImage>,
    buf: Vec<u8>,
}

impl FrameIter<'_> {
    fn next_frame(&mut self) -> Result<Option<RgbImage>> {
        loop {
            let frame = if let Some(frame) = self.pending.pop() {
                frame
            } else if self.next_sample < self.reader.samples.len() {
                let index = self.next_sample;
                self.next_sample += 1;
                self.reader.read_sample(index, &mut self.buf)?;
                match self
                    .decoder
                    .decode(&self.buf)
                    .with_context(|| format!("decoding frame {index}"))?
                {
                    Some(frame) => frame,
                    None => continue,
                }
            } else if self.next_sample == self.reader.samples.len() {
                self.next_sample += 1;
                self.pending = self.decoder.flush()?;
                self.pending.reverse();
                continue;
            } else {
                return Ok(None);
            };
            if self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            return Ok(Some(frame));
        }
    }
}

impl Iterator for FrameIter<'_> {
    type Item = Result<RgbImage>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_frame().transpose()
    }
}

fn audio_track(trak: &Trak, file_len: u64) -> Result<AudioTrack> {
    let stbl = &trak.mdia.minf.stbl;
    let (codec, dfla, entry) = match stbl.stsd.codecs.first() {
        Some(Codec::Flac(flac)) => ("flac".to_string(), Some(flac.dfla.clone()), &flac.audio),
        Some(Codec::Mp4a(mp4a)) => ("mp4a".to_string(), None, &mp4a.audio),
        Some(Codec::Opus(opus)) => ("Opus".to_string(), None, &opus.audio),
        Some(other) => bail!("unsupported sample entry {}", codec_name(other)),
        None => bail!("no sample description"),
    };
    let samples = sample_locations(stbl)?;
    if let Some((i, _)) = samples
        .iter()
        .enumerate()
        .find(|(_, (o, s))| o + u64::from(*s) > file_len)
    {
        bail!("the file is truncated: sound sample {i} lies past its end");
    }
    let duration_s = track_seconds(trak)?;
    Ok(AudioTrack {
        sample_rate: u32::from(entry.sample_rate.integer()),
        channels: entry.channel_count,
        duration_s,
        codec,
        dfla,
        samples,
    })
}

/// A track's length: its sample durations over its timescale.
fn track_seconds(trak: &Trak) -> Result<f64> {
    let timescale = trak.mdia.mdhd.timescale;
    ensure!(timescale > 0, "the timescale is 0");
    let ticks: u64 = trak
        .mdia
        .minf
        .stbl
        .stts
        .entries
        .iter()
        .map(|e| u64::from(e.sample_count) * u64::from(e.sample_delta))
        .sum();
    Ok(ticks as f64 / f64::from(timescale))
}

/// Walks top-level boxes without reading `mdat`, and decodes `moov`.
fn find_moov(file: &mut BufReader<File>, file_len: u64) -> Result<Moov> {
    let mut position = 0u64;
    let mut seen_any = false;
    while position < file_len {
        file.seek(SeekFrom::Start(position))?;
        let header = match Header::read_from(file) {
            Ok(header) => header,
            Err(_) if seen_any => {
                bail!("the file is truncated inside a box header at byte {position}")
            }
            Err(_) => bail!("not an MP4 file: no box header at the start"),
        };
        let header_len = file.stream_position()? - position;
        let body_len = header
            .size
            .map_or(file_len - position - header_len, |s| s as u64);
        let leading = [b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide"].map(FourCC::new);
        if !seen_any && !leading.contains(&header.kind) {
            bail!(
                "not an MP4 file: it starts with {:?} instead of an ftyp box",
                header.kind.to_string()
            );
        }
        seen_any = true;
        if header.kind == Moov::KIND {
            ensure!(
                position + header_len + body_len <= file_len,
                "the file is truncated: the moov box needs {body_len} bytes but only {} remain",
                file_len - position - header_len
            );
            ensure!(
                body_len <= MAX_MOOV_BYTES,
                "the moov box is {body_len} bytes, more than this reader accepts"
            );
            let mut body = vec![0u8; body_len as usize];
            file.read_exact(&mut body)?;
            return Moov::decode_body(&mut body.as_slice()).context("the moov box is malformed");
        }
        position += header_len + body_len;
    }
    bail!("the file has no moov box (truncated, or not a finished MP4)")
}

fn sample_locations(stbl: &Stbl) -> Result<Vec<(u64, u32)>> {
    let sizes: Vec<u32> = match &stbl.stsz.samples {
        StszSamples::Identical { count, size } => vec![*size; *count as usize],
        StszSamples::Different { sizes } => sizes.clone(),
    };
    let chunk_offsets: Vec<u64> = match (&stbl.stco, &stbl.co64) {
        (Some(stco), _) => stco.entries.iter().map(|o| u64::from(*o)).collect(),
        (None, Some(co64)) => co64.entries.clone(),
        (None, None) => bail!("the sample table has no chunk offsets (stco/co64)"),
    };
    let mut locations = Vec::with_capacity(sizes.len());
    let mut sample = 0usize;
    for (chunk, chunk_offset) in chunk_offsets.iter().enumerate() {
        let chunk_number = chunk as u32 + 1;
        let per_chunk = stbl
            .stsc
            .entries
            .iter()
            .rev()
            .find(|e| e.first_chunk <= chunk_number)
            .map(|e| e.samples_per_chunk)
            .context("the sample-to-chunk table (stsc) is empty")?;
        let mut offset = *chunk_offset;
        for _ in 0..per_chunk {
            let size = *sizes.get(sample).with_context(|| {
                format!(
                    "the sample tables disagree: chunks hold more than the {} sizes in stsz",
                    sizes.len()
                )
            })?;
            locations.push((offset, size));
            offset += u64::from(size);
            sample += 1;
        }
    }
    ensure!(
        sample == sizes.len(),
        "the sample tables disagree: stsz lists {} samples but the chunks hold {sample}",
        sizes.len()
    );
    Ok(locations)
}

fn codec_name(codec: &Codec) -> String {
    match codec {
        Codec::Hev1(_) | Codec::Hvc1(_) => "H.265/HEVC".into(),
        Codec::Vp08(_) => "VP8".into(),
        Codec::Vp09(_) => "VP9".into(),
        Codec::Av01(_) => "AV1".into(),
        Codec::Unknown(kind, _) => format!("an unknown codec ({kind})"),
        _ => "not a supported video codec".into(),
    }
}
