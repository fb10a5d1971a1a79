//! Title-card drawing with the bundled Roboto font (assets/fonts, Apache-2.0): word-wrapped,
//! centred lines, shrunk until the block fits the frame. Never reads fonts from the host system.

use super::TitleCard;
use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont, point};
use image::{Rgb, RgbImage};

static FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/Roboto-Medium.ttf");

/// Text may use this share of the frame's width and height.
const TEXT_AREA: f32 = 0.8;
/// Starting glyph height as a share of the frame height, for short titles.
const START_SIZE: f32 = 1.0 / 10.0;
const MIN_SIZE_PX: f32 = 6.0;

pub fn title_card(card: &TitleCard, width: u32, height: u32) -> RgbImage {
    let font =
        FontRef::try_from_slice(FONT_BYTES).expect("the bundled font is a valid TrueType file");
    let mut image = RgbImage::from_pixel(width, height, Rgb(card.background));
    let max_width = width as f32 * TEXT_AREA;
    let max_height = height as f32 * TEXT_AREA;
    let mut size = (height as f32 * START_SIZE).max(MIN_SIZE_PX);
    let lines = loop {
        let scaled = font.as_scaled(PxScale::from(size));
        let lines = wrap(&scaled, &card.text, max_width);
        let fits_width = lines
            .iter()
            .all(|line| line_width(&scaled, line) <= max_width);
        let fits_height = lines.len() as f32 * line_height(&scaled) <= max_height;
        if (fits_width && fits_height) || size <= MIN_SIZE_PX {
            break lines;
        }
        size = (size * 0.9).max(MIN_SIZE_PX);
    };
    let scaled = font.as_scaled(PxScale::from(size));
    let block_height = lines.len() as f32 * line_height(&scaled);
    let mut baseline = (height as f32 - block_height) / 2.0 + scaled.ascent();
    for line in &lines {
        let x = (width as f32 - line_width(&scaled, line)) / 2.0;
        draw_line(&mut image, &scaled, line, x, baseline, card.color);
        baseline += line_height(&scaled);
    }
    image
}

fn line_height<F: Font>(font: &impl ScaleFont<F>) -> f32 {
    font.ascent() - font.descent() + font.line_gap()
}

fn glyphs<'a, F: Font>(
    font: &'a impl ScaleFont<F>,
    text: &'a str,
) -> impl Iterator<Item = (GlyphId, f32)> + 'a {
    let mut previous: Option<GlyphId> = None;
    let mut x = 0.0;
    text.chars().filter(|c| !c.is_control()).map(move |c| {
        let id = font.glyph_id(c);
        if let Some(previous) = previous {
            x += font.kern(previous, id);
        }
        let position = x;
        x += font.h_advance(id);
        previous = Some(id);
        (id, position)
    })
}

fn line_width<F: Font>(font: &impl ScaleFont<F>, line: &str) -> f32 {
    glyphs(font, line)
        .last()
        .map_or(0.0, |(id, x)| x + font.h_advance(id))
}

/// Greedy word wrap; explicit newlines always break. A word wider than the line stays whole
/// (the caller shrinks the font until it fits).
fn wrap<F: Font>(font: &impl ScaleFont<F>, text: &str, max_width: f32) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            let candidate = if line.is_empty() {
                word.to_string()
            } else {
                format!("{line} {word}")
            };
            if line.is_empty() || line_width(font, &candidate) <= max_width {
                line = candidate;
            } else {
                lines.push(std::mem::replace(&mut line, word.to_string()));
            }
        }
        lines.push(line);
    }
    lines
}

fn draw_line<F: Font>(
    image: &mut RgbImage,
    font: &impl ScaleFont<F>,
    line: &str,
    x: f32,
    baseline: f32,
    color: [u8; 3],
) {
    let (width, height) = image.dimensions();
    for (id, offset) in glyphs(font, line) {
        let glyph = id.with_scale_and_position(font.scale(), point(x + offset, baseline));
        let Some(outline) = font.font().outline_glyph(glyph) else {
            continue;
        };
        let bounds = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            let px = bounds.min.x as i64 + i64::from(gx);
            let py = bounds.min.y as i64 + i64::from(gy);
            if px < 0 || py < 0 || px >= i64::from(width) || py >= i64::from(height) {
                return;
            }
            let pixel = image.get_pixel_mut(px as u32, py as u32);
            for (channel, target) in pixel.0.iter_mut().zip(color) {
                let value = f32::from(*channel) * (1.0 - coverage) + f32::from(target) * coverage;
                *channel = value.round() as u8;
            }
        });
    }
}
