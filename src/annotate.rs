//! Drawing detections onto images: a box and an `expression score` label per
//! face, for `fer-edge detect --annotate`, `fer-edge preview` and the
//! service's snapshots.

use crate::face::{Expression, Face};
use crate::preprocess::{frame_to_rgb, Frame};
use anyhow::Context;
use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};

/// Pixel size of one font cell edge (8x8 glyphs scaled by 2).
const GLYPH_SCALE: u32 = 2;
const GLYPH: u32 = 8 * GLYPH_SCALE;

/// A distinct colour per expression.
fn colour(expression: Expression) -> Rgb<u8> {
    const PALETTE: [[u8; 3]; Expression::COUNT] = [
        [230, 40, 40],   // anger
        [120, 160, 40],  // disgust
        [150, 60, 200],  // fear
        [250, 200, 30],  // happiness
        [200, 200, 200], // neutral
        [40, 110, 230],  // sadness
        [250, 120, 30],  // surprise
    ];
    Rgb(PALETTE[expression.index()])
}

/// Draws every face's box and label onto `image`.
pub fn draw_faces(image: &mut RgbImage, faces: &[Face]) {
    let thickness = (image.width().min(image.height()) / 200).max(2);
    for face in faces {
        let c = colour(face.expression);
        let [x1, y1, x2, y2] = face.bbox.map(|v| v.max(0.0).round() as u32);
        for t in 0..thickness {
            draw_rect(
                image,
                x1 + t,
                y1 + t,
                x2.saturating_sub(t),
                y2.saturating_sub(t),
                c,
            );
        }
        let label = format!("{} {:.2}", face.expression, face.score);
        let label_width = GLYPH * label.len() as u32 + 4;
        // Kept inside the image: moved left at its right edge.
        let label_x = x1.min(image.width().saturating_sub(label_width));
        let label_y = y1.saturating_sub(GLYPH + 2);
        fill_rect(
            image,
            label_x,
            label_y,
            label_x + label_width,
            label_y + GLYPH + 2,
            c,
        );
        draw_text(image, label_x + 2, label_y + 1, &label, Rgb([0, 0, 0]));
    }
}

/// `frame` as an RGB image with `faces` drawn on it; `rgb` is the pixel
/// buffer to reuse (handed back by `RgbImage::into_raw`).
pub fn annotated_frame(frame: &Frame, faces: &[Face], rgb: Vec<u8>) -> anyhow::Result<RgbImage> {
    let mut rgb = rgb;
    let (width, height) = frame_to_rgb(frame, &mut rgb)?;
    let mut image = RgbImage::from_raw(width as u32, height as u32, rgb)
        .context("frame size does not match its pixels")?;
    draw_faces(&mut image, faces);
    Ok(image)
}

/// Writes `text` in white on black in the top-left corner of `image`.
pub fn draw_caption(image: &mut RgbImage, text: &str) {
    fill_rect(
        image,
        0,
        0,
        GLYPH * text.len() as u32 + 4,
        GLYPH + 4,
        Rgb([0, 0, 0]),
    );
    draw_text(image, 2, 2, text, Rgb([255, 255, 255]));
}

/// Writes `image` to `dir/<stem of source>.png` atomically (temporary file,
/// then rename), so a crash never leaves a half-written file. Returns the path.
pub fn save_annotated(image: &RgbImage, dir: &Path, source: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let stem = source
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or("frame".into());
    let path = dir.join(format!("{stem}.png"));
    let partial = dir.join(format!(".{stem}.png.partial"));
    image.save_with_format(&partial, image::ImageFormat::Png)?;
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

fn put(image: &mut RgbImage, x: u32, y: u32, c: Rgb<u8>) {
    if x < image.width() && y < image.height() {
        image.put_pixel(x, y, c);
    }
}

fn draw_rect(image: &mut RgbImage, x1: u32, y1: u32, x2: u32, y2: u32, c: Rgb<u8>) {
    for x in x1..=x2 {
        put(image, x, y1, c);
        put(image, x, y2, c);
    }
    for y in y1..=y2 {
        put(image, x1, y, c);
        put(image, x2, y, c);
    }
}

fn fill_rect(image: &mut RgbImage, x1: u32, y1: u32, x2: u32, y2: u32, c: Rgb<u8>) {
    for y in y1..y2 {
        for x in x1..x2 {
            put(image, x, y, c);
        }
    }
}

fn draw_text(image: &mut RgbImage, x: u32, y: u32, text: &str, c: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let Some(glyph) = font8x8::BASIC_FONTS.get(ch) else {
            continue;
        };
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) != 0 {
                    let px = x + i as u32 * GLYPH + col * GLYPH_SCALE;
                    let py = y + row as u32 * GLYPH_SCALE;
                    fill_rect(image, px, py, px + GLYPH_SCALE, py + GLYPH_SCALE, c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face::ExpressionScores;

    #[test]
    fn draws_box_edges_and_label_in_expression_colour() {
        let mut image = RgbImage::new(100, 100);
        let face = Face {
            bbox: [30.0, 40.0, 70.0, 90.0],
            expression: Expression::Sadness,
            score: 0.5,
            scores: ExpressionScores::default(),
        };
        draw_faces(&mut image, std::slice::from_ref(&face));
        let c = colour(Expression::Sadness);
        assert_eq!(*image.get_pixel(30, 60), c); // left edge
        assert_eq!(*image.get_pixel(70, 60), c); // right edge
        assert_eq!(*image.get_pixel(50, 90), c); // bottom edge
        assert_eq!(*image.get_pixel(50, 65), Rgb([0, 0, 0])); // inside stays untouched
        let label_pixels = (30..100).filter(|&x| *image.get_pixel(x, 30) == c).count();
        assert!(label_pixels > 10, "label background above the box");

        // At the right edge the label moves left to stay whole.
        let mut image = RgbImage::new(100, 100);
        let edge = Face {
            bbox: [80.0, 40.0, 99.0, 90.0],
            ..face
        };
        draw_faces(&mut image, &[edge]);
        assert_eq!(*image.get_pixel(99, 22), c, "label reaches the right edge");
        assert_eq!(*image.get_pixel(0, 22), c, "and starts left of the box");
    }
}
