//! Still images (keyframes, character sheets): PNG files with the generation record embedded as
//! an `iTXt` chunk under [`METADATA_KEY`], as MP4s carry theirs, so that an image can be
//! reproduced from the file alone.

use super::METADATA_KEY;
use anyhow::{Context, Result};
use image::RgbImage;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes `image` as an 8-bit RGB PNG at `path` with `metadata` embedded (atomically: the
/// destination either keeps its old content or gets the complete new file).
pub fn write_png(path: &Path, image: &RgbImage, metadata: &serde_json::Value) -> Result<()> {
    (|| -> Result<()> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let mut out = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new(".")))?;
        {
            let mut encoder = png::Encoder::new(
                BufWriter::new(out.as_file_mut()),
                image.width(),
                image.height(),
            );
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            if !metadata.is_null() {
                encoder.add_itxt_chunk(METADATA_KEY.to_string(), metadata.to_string())?;
            }
            let mut writer = encoder.write_header()?;
            writer.write_image_data(image.as_raw())?;
            writer.finish()?;
        }
        out.as_file_mut().flush()?;
        out.persist(path)?;
        Ok(())
    })()
    .with_context(|| format!("writing image {}", path.display()))
}

/// The generation record a PNG carries, `null` when it has none.
pub fn read_png_metadata(path: &Path) -> Result<serde_json::Value> {
    (|| -> Result<serde_json::Value> {
        let file = std::io::BufReader::new(std::fs::File::open(path)?);
        let reader = png::Decoder::new(file).read_info()?;
        let info = reader.info();
        let text = info
            .utf8_text
            .iter()
            .find(|chunk| chunk.keyword == METADATA_KEY)
            .map(|chunk| chunk.get_text())
            .transpose()?
            .or_else(|| {
                info.uncompressed_latin1_text
                    .iter()
                    .find(|chunk| chunk.keyword == METADATA_KEY)
                    .map(|chunk| chunk.text.clone())
            });
        Ok(match text {
            Some(text) => serde_json::from_str(&text).context("the embedded record is not JSON")?,
            None => serde_json::Value::Null,
        })
    })()
    .with_context(|| format!("reading the record of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_and_the_pixels_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyframe.png");
        let image = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 200]));
        let record = serde_json::json!({ "generate": { "prompt": "a fox, «snow»", "seed": 7 } });
        write_png(&path, &image, &record).unwrap();
        assert_eq!(read_png_metadata(&path).unwrap(), record);
        assert_eq!(image::open(&path).unwrap().to_rgb8(), image);
    }

    #[test]
    fn a_png_without_a_record_reads_null_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.png");
        RgbImage::new(2, 2).save(&plain).unwrap();
        assert_eq!(read_png_metadata(&plain).unwrap(), serde_json::Value::Null);
        let garbage = dir.path().join("garbage.png");
        std::fs::write(&garbage, b"not a png").unwrap();
        let err = read_png_metadata(&garbage).unwrap_err();
        assert!(format!("{err:#}").contains("garbage.png"), "{err:#}");
    }
}
