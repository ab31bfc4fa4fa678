//! Still images (JPEG, PNG) decoded to RGB under a pixel limit: the one
//! decoder policy of `fer-edge detect` and of the image-directory source.
//!
//! Nothing is allocated from what a header claims before the claim is
//! checked: a file larger than an image of the limit could be is not read
//! in full, a JPEG must be whole (start and end markers: one cut short is
//! refused, not filled with grey) and its frame header within the limit, a
//! PNG's header within the limit and its decoded bytes within those of an
//! RGBA image of the limit (a 16-bit or alpha PNG at the limit is refused).

use super::frame::{check_pixels, jpeg_size_within};
use super::jpeg;
use crate::preprocess::mjpeg_to_rgb;
use image::codecs::png::PngDecoder;
use image::{DynamicImage, ImageDecoder, RgbImage};
use std::io::{Cursor, Read};
use std::path::Path;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

/// Most bytes a file of an image of `max_pixels` may have: 4 a pixel (raw
/// RGBA, more than any real JPEG or PNG of that size needs) and 1 MiB of
/// metadata.
fn max_file_bytes(max_pixels: u64) -> u64 {
    max_pixels.saturating_mul(4).saturating_add(1 << 20)
}

/// Reads an image file, refusing one larger than an image of `max_pixels`
/// can be without reading it in full.
pub fn read_image_file(path: &Path, max_pixels: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let limit = max_file_bytes(max_pixels);
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "larger than {} MB, more than an image within the pixel limit needs",
            limit >> 20
        ));
    }
    Ok(bytes)
}

/// Decodes a JPEG or PNG (told apart by their signatures) to RGB8.
pub fn decode_image(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, String> {
    if bytes.starts_with(&PNG_SIGNATURE) {
        decode_png(bytes, max_pixels)
    } else if bytes.starts_with(&jpeg::JPEG_START[..2]) {
        decode_jpeg(bytes, max_pixels)
    } else {
        Err("not a JPEG or PNG image".into())
    }
}

/// Decodes a whole JPEG (see the module documentation) to RGB8.
fn decode_jpeg(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, String> {
    let (width, height) = jpeg_size_within(bytes, max_pixels)?;
    let mut rgb = Vec::new();
    mjpeg_to_rgb(bytes, Some((width, height)), &mut rgb).map_err(|e| e.to_string())?;
    Ok(RgbImage::from_raw(width as u32, height as u32, rgb)
        .expect("the decoder wrote width x height RGB pixels"))
}

/// Decodes a PNG (see the module documentation) to RGB8.
pub fn decode_png(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, String> {
    let max_bytes = max_pixels.saturating_mul(4);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_bytes);
    let decoder =
        PngDecoder::with_limits(Cursor::new(bytes), limits).map_err(|e| format!("PNG: {e}"))?;
    let (width, height) = decoder.dimensions();
    check_pixels(width as usize, height as usize, max_pixels)?;
    if decoder.total_bytes() > max_bytes {
        return Err(format!(
            "PNG of {width}x{height} decodes to {} MB ({:?}), more than RGBA at the pixel limit",
            decoder.total_bytes() >> 20,
            decoder.color_type()
        ));
    }
    let image = DynamicImage::from_decoder(decoder).map_err(|e| format!("PNG: {e}"))?;
    Ok(image.into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    fn png(width: u32, height: u32, colour: image::ExtendedColorType) -> Vec<u8> {
        let bytes_per_pixel = colour.bits_per_pixel() as usize / 8;
        let pixels = vec![7u8; width as usize * height as usize * bytes_per_pixel];
        let mut out = Vec::new();
        image::codecs::png::PngEncoder::new(&mut out)
            .write_image(&pixels, width, height, colour)
            .unwrap();
        out
    }

    #[test]
    fn a_png_within_the_limit_decodes_to_rgb() {
        let image = decode_image(&png(8, 4, image::ExtendedColorType::La8), 32).unwrap();
        assert_eq!(image.dimensions(), (8, 4));
        assert_eq!(image.get_pixel(3, 2).0, [7, 7, 7]);
    }

    #[test]
    fn a_png_above_the_limit_is_refused_by_its_header() {
        let err = decode_image(&png(8, 4, image::ExtendedColorType::Rgb8), 31).unwrap_err();
        assert!(
            err.contains("8x4") && err.contains("max_frame_pixels"),
            "{err}"
        );
    }

    #[test]
    fn a_16_bit_png_that_needs_more_than_rgba8_at_the_limit_is_refused() {
        let wide = png(8, 4, image::ExtendedColorType::Rgba16);
        let err = decode_image(&wide, 32).unwrap_err();
        assert!(err.contains("PNG") && err.contains("limit"), "{err}");
        assert!(decode_image(&wide, 64).is_ok());
    }

    #[test]
    fn a_jpeg_cut_short_or_foreign_bytes_are_refused() {
        let jpeg = std::fs::read("samples/obama.jpg").unwrap();
        assert!(decode_image(&jpeg, u64::MAX).is_ok());
        let err = decode_image(&jpeg[..jpeg.len() / 2], u64::MAX).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let err = decode_image(b"GIF89a", u64::MAX).unwrap_err();
        assert!(err.contains("not a JPEG or PNG"), "{err}");
    }

    #[test]
    fn a_file_larger_than_an_image_of_the_limit_is_not_read() {
        let path = std::env::temp_dir().join(format!("fer-edge-still-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; (1 << 20) + 401]).unwrap();
        let err = read_image_file(&path, 100).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("larger than"), "{err}");
    }
}
