//! Decides by content whether a file is an image, video or audio file the studio accepts: magic
//! bytes first, then a parse of the container header so that a renamed or truncated file is
//! refused. It never trusts the file name or extension.

use crate::error::{Result, StudioError};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MediaKind {
    Image,
    Video,
    Audio,
    /// A LoRA (a safetensors file the engine reads as one; see [`super::lora`]).
    Lora,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
            Self::Audio => "audio",
            Self::Lora => "lora",
        }
    }
}

impl std::str::FromStr for MediaKind {
    type Err = StudioError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "image" => Ok(Self::Image),
            "video" => Ok(Self::Video),
            "audio" => Ok(Self::Audio),
            "lora" => Ok(Self::Lora),
            other => Err(StudioError::Invalid(format!(
                "kind {other:?} is not one of image, video, audio, lora"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MediaInfo {
    pub kind: MediaKind,
    pub mime: &'static str,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// Identifies `path` (named `name` in messages) or refuses it with [`StudioError::NotMedia`].
pub fn probe(path: &Path, name: &str) -> Result<MediaInfo> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut head = Vec::with_capacity(8192);
    (&mut file).take(8192).read_to_end(&mut head)?;
    let not_media = |why: String| StudioError::NotMedia(format!("{name}: {why}"));
    let Some(found) = infer::get(&head) else {
        return Err(not_media(
            "not an image, video or audio file (unrecognised content)".into(),
        ));
    };
    let mime = found.mime_type();
    let header = |what: &str, ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(not_media(format!(
                "{mime} header is damaged or truncated ({what})"
            )))
        }
    };
    match mime {
        "image/png" | "image/jpeg" | "image/gif" | "image/webp" => {
            let reader =
                image::ImageReader::new(BufReader::new(File::open(path)?)).with_guessed_format()?;
            let (width, height) = reader
                .into_dimensions()
                .map_err(|e| not_media(format!("{mime} header cannot be read: {e}")))?;
            if width == 0 || height == 0 {
                return Err(not_media(format!("{mime} has zero size")));
            }
            header("end of image", image_is_complete(&mut file, mime, len)?)?;
            return Ok(MediaInfo {
                kind: MediaKind::Image,
                mime,
                width: Some(width),
                height: Some(height),
            });
        }
        "video/mp4" | "video/quicktime" | "video/x-m4v" | "audio/m4a" => {
            header("ISO media boxes", iso_media_has_movie(&mut file, len)?)?;
        }
        "video/webm" | "video/x-matroska" => header("EBML segment", ebml_has_segment(&head))?,
        "audio/x-wav" => header("RIFF fmt chunk", wav_has_format(&head))?,
        "audio/x-flac" => header("STREAMINFO", head.len() >= 42 && head[4] & 0x7f == 0)?,
        "audio/ogg" | "audio/opus" => header("Ogg page", head.len() >= 27 && head[4] == 0)?,
        "audio/mpeg" => header("MPEG audio frame", mp3_has_frame(&head))?,
        other => {
            return Err(not_media(format!(
                "{other} is not a supported media type (images: PNG, JPEG, GIF, WebP; \
                 video: MP4, MOV, WebM, MKV; audio: WAV, FLAC, Ogg, MP3, M4A)"
            )));
        }
    }
    let kind = if mime.starts_with("video/") {
        MediaKind::Video
    } else {
        MediaKind::Audio
    };
    Ok(MediaInfo {
        kind,
        mime,
        width: None,
        height: None,
    })
}

/// Checks the format's end marker, which a truncated upload lacks.
fn image_is_complete(file: &mut File, mime: &str, len: u64) -> Result<bool> {
    let tail_len = len.min(64);
    let mut tail = vec![0u8; tail_len as usize];
    file.seek(SeekFrom::Start(len - tail_len))?;
    file.read_exact(&mut tail)?;
    Ok(match mime {
        "image/png" => tail.ends_with(b"IEND\xaeB`\x82"),
        "image/jpeg" => tail.windows(2).any(|w| w == [0xff, 0xd9]),
        "image/gif" => tail.last() == Some(&0x3b),
        // RIFF length field: the bytes after it (padded to even).
        _ => {
            let mut head = [0u8; 8];
            file.seek(SeekFrom::Start(0))?;
            file.read_exact(&mut head)?;
            let riff = u64::from(u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")));
            riff + 8 == len || riff + 9 == len
        }
    })
}

/// Walks the top-level ISO base media boxes: sizes must stay inside the file and a `moov` box
/// (the movie header) must be present.
fn iso_media_has_movie(file: &mut File, len: u64) -> Result<bool> {
    let mut offset = 0u64;
    let mut has_moov = false;
    while offset + 8 <= len {
        file.seek(SeekFrom::Start(offset))?;
        let mut head = [0u8; 16];
        file.read_exact(&mut head[..8])?;
        let mut size = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
        let kind: [u8; 4] = head[4..8].try_into().expect("4 bytes");
        if offset == 0 && &kind != b"ftyp" {
            return Ok(false);
        }
        if size == 1 {
            file.read_exact(&mut head[8..16])?;
            size = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes"));
        } else if size == 0 {
            size = len - offset; // box runs to the end of the file
        }
        if size < 8 || offset + size > len {
            return Ok(false);
        }
        has_moov |= &kind == b"moov";
        offset += size;
    }
    Ok(has_moov && offset == len)
}

/// Reads an EBML variable-length integer; returns (value, length in bytes).
fn ebml_vint(bytes: &[u8], keep_marker: bool) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let len = first.leading_zeros() as usize + 1;
    if len > 8 || bytes.len() < len {
        return None;
    }
    let mask = if keep_marker { 0xff } else { 0xffu8 >> len };
    let mut value = u64::from(first & mask);
    for b in &bytes[1..len] {
        value = (value << 8) | u64::from(*b);
    }
    Some((value, len))
}

/// The EBML header must be followed by a Segment element.
fn ebml_has_segment(head: &[u8]) -> bool {
    let Some((id, id_len)) = ebml_vint(head, true) else {
        return false;
    };
    let Some((size, size_len)) = head.get(id_len..).and_then(|b| ebml_vint(b, false)) else {
        return false;
    };
    let next = id_len + size_len + size as usize;
    id == 0x1A45_DFA3
        && head
            .get(next..)
            .and_then(|b| ebml_vint(b, true))
            .is_some_and(|(id, _)| id == 0x1853_8067)
}

fn wav_has_format(head: &[u8]) -> bool {
    head.len() >= 36
        && &head[8..12] == b"WAVE"
        && &head[12..16] == b"fmt "
        && u32::from_le_bytes(head[16..20].try_into().expect("4 bytes")) >= 16
        && u16::from_le_bytes([head[22], head[23]]) > 0 // channels
        && u32::from_le_bytes(head[24..28].try_into().expect("4 bytes")) > 0 // sample rate
}

/// Skips an ID3v2 tag if present and checks for an MPEG audio frame header.
fn mp3_has_frame(head: &[u8]) -> bool {
    let start = if head.starts_with(b"ID3") && head.len() >= 10 {
        let size = head[6..10]
            .iter()
            .fold(0usize, |acc, b| (acc << 7) | usize::from(b & 0x7f));
        10 + size
    } else {
        0
    };
    if start >= head.len() {
        // The tag is larger than the sniffed head: trust the tag header.
        return start > 10;
    }
    let frame = &head[start..];
    frame.len() >= 4
        && frame[0] == 0xff
        && frame[1] & 0xe0 == 0xe0
        && frame[2] >> 4 != 0x0f // bitrate index 15 is invalid
        && (frame[2] >> 2) & 0x03 != 0x03 // sample rate index 3 is reserved
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    pub(crate) fn png_bytes(w: u32, h: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(w, h)
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    }

    fn mp4_bytes() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&[0, 0, 0, 16]);
        v.extend_from_slice(b"ftypisom\0\0\0\0");
        v.extend_from_slice(&[0, 0, 0, 8]);
        v.extend_from_slice(b"moov");
        v
    }

    #[test]
    fn png_is_an_image_with_its_dimensions() {
        let f = file_with(&png_bytes(7, 5));
        let info = probe(f.path(), "a.png").unwrap();
        assert_eq!(info.kind, MediaKind::Image);
        assert_eq!((info.width, info.height), (Some(7), Some(5)));
    }

    #[test]
    fn text_renamed_to_png_is_not_media() {
        let f = file_with(b"hello, I am not a picture");
        let err = probe(f.path(), "fake.png").unwrap_err();
        assert!(matches!(err, StudioError::NotMedia(_)));
        assert!(err.to_string().contains("fake.png"), "{err}");
    }

    #[test]
    fn truncated_png_is_refused() {
        let bytes = png_bytes(8, 8);
        let f = file_with(&bytes[..20]);
        assert!(matches!(
            probe(f.path(), "t.png"),
            Err(StudioError::NotMedia(_))
        ));
    }

    #[test]
    fn mp4_needs_a_movie_box_inside_the_file() {
        let good = mp4_bytes();
        assert_eq!(
            probe(file_with(&good).path(), "v.mp4").unwrap().kind,
            MediaKind::Video
        );
        let truncated = &good[..good.len() - 2];
        assert!(probe(file_with(truncated).path(), "v.mp4").is_err());
    }

    #[test]
    fn wav_header_is_checked() {
        let mut wav = b"RIFF\x24\0\0\0WAVEfmt \x10\0\0\0\x01\0\x01\0\x44\xac\0\0\x88\x58\x01\0\x02\0\x10\0data\0\0\0\0".to_vec();
        assert_eq!(
            probe(file_with(&wav).path(), "a.wav").unwrap().kind,
            MediaKind::Audio
        );
        wav[22] = 0; // zero channels
        assert!(probe(file_with(&wav).path(), "a.wav").is_err());
    }

    #[test]
    fn known_but_unsupported_types_are_refused_by_name() {
        let f = file_with(b"%PDF-1.7\n...");
        let err = probe(f.path(), "doc.pdf").unwrap_err();
        assert!(
            err.to_string().contains("not a supported media type"),
            "{err}"
        );
    }
}
