//! Camera pixel formats to packed RGB8: raw YUYV (YUV 4:2:2), GREY and MJPEG.

use super::PreprocessError;
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

/// Converts a packed YUYV 4:2:2 frame (`Y0 U Y1 V` per pixel pair) to RGB8,
/// using the BT.601 limited-range matrix that UVC webcams use.
pub fn yuyv_to_rgb(
    yuyv: &[u8],
    width: usize,
    height: usize,
    rgb: &mut Vec<u8>,
) -> Result<(), PreprocessError> {
    if !width.is_multiple_of(2) {
        return Err(PreprocessError::BadFrame(format!(
            "YUYV frame width {width} is odd; YUYV packs pixels in pairs"
        )));
    }
    expect_len("YUYV", yuyv.len(), width * height * 2)?;
    rgb.resize(width * height * 3, 0);
    for (pair, out) in yuyv.chunks_exact(4).zip(rgb.chunks_exact_mut(6)) {
        let (u, v) = (pair[1] as f32 - 128.0, pair[3] as f32 - 128.0);
        let (r_off, g_off, b_off) = (1.596 * v, -0.392 * u - 0.813 * v, 2.017 * u);
        for (luma, px) in [pair[0], pair[2]].into_iter().zip(out.chunks_exact_mut(3)) {
            let y = 1.164 * (luma as f32 - 16.0);
            px[0] = (y + r_off).round().clamp(0.0, 255.0) as u8;
            px[1] = (y + g_off).round().clamp(0.0, 255.0) as u8;
            px[2] = (y + b_off).round().clamp(0.0, 255.0) as u8;
        }
    }
    Ok(())
}

/// Replicates an 8-bit grey frame into RGB8.
pub fn grey_to_rgb(
    grey: &[u8],
    width: usize,
    height: usize,
    rgb: &mut Vec<u8>,
) -> Result<(), PreprocessError> {
    expect_len("GREY", grey.len(), width * height)?;
    rgb.clear();
    rgb.extend(grey.iter().flat_map(|&g| [g, g, g]));
    Ok(())
}

/// Decodes one MJPEG frame (a JPEG image) to RGB8 and returns its size.
///
/// `expected` is the size the frame's source read from its header and
/// checked against its pixel limit ([`crate::capture::CapturedFrame::mjpeg`]):
/// a frame whose decoder finds another size is refused before its pixels are
/// allocated, so the limit holds whatever the headers say.
///
/// Many UVC cameras omit the Huffman tables (DHT) from their MJPEG frames and
/// rely on the standard tables of JPEG Annex K.3. The decoder fills them in
/// when the frame carries the Motion-JPEG `AVI1` APP0 marker, so a frame with
/// neither gets that marker inserted before decoding.
pub fn mjpeg_to_rgb(
    jpeg: &[u8],
    expected: Option<(usize, usize)>,
    rgb: &mut Vec<u8>,
) -> Result<(usize, usize), PreprocessError> {
    if !ends_with_eoi(jpeg) {
        return Err(PreprocessError::BadFrame(
            "truncated JPEG/MJPEG frame: no end-of-image marker".into(),
        ));
    }
    let patched;
    let jpeg = if needs_default_huffman_tables(jpeg) {
        patched = with_avi1_marker(jpeg);
        &patched[..]
    } else {
        jpeg
    };
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(jpeg), options);
    let corrupt = |e: zune_jpeg::errors::DecodeErrors| {
        PreprocessError::BadFrame(format!("corrupt JPEG/MJPEG frame: {e}"))
    };
    decoder.decode_headers().map_err(corrupt)?;
    let info = decoder
        .info()
        .ok_or_else(|| PreprocessError::BadFrame("JPEG frame has no header".into()))?;
    let size = (info.width as usize, info.height as usize);
    if let Some(expected) = expected.filter(|&e| e != size) {
        return Err(PreprocessError::BadFrame(format!(
            "JPEG frame decodes to {}x{}, but its header was read as {}x{}",
            size.0, size.1, expected.0, expected.1
        )));
    }
    let bytes = decoder
        .output_buffer_size()
        .ok_or_else(|| PreprocessError::BadFrame("JPEG frame has no header".into()))?;
    rgb.resize(bytes, 0);
    decoder.decode_into(rgb).map_err(corrupt)?;
    Ok(size)
}

const SOI: [u8; 2] = [0xFF, 0xD8];
const DHT: u8 = 0xC4;
const SOS: u8 = 0xDA;
const APP0: u8 = 0xE0;

/// True when the JPEG headers (before the first scan) hold no DHT segment and
/// no `AVI1` marker, i.e. the decoder would lack Huffman tables.
fn needs_default_huffman_tables(jpeg: &[u8]) -> bool {
    if !jpeg.starts_with(&SOI) {
        return false; // not a JPEG: let the decoder report it
    }
    let mut pos = 2;
    while pos + 4 <= jpeg.len() {
        if jpeg[pos] != 0xFF {
            return false;
        }
        let marker = jpeg[pos + 1];
        if marker == 0xFF {
            pos += 1; // fill byte
            continue;
        }
        let length = u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]) as usize;
        match marker {
            DHT => return false,
            APP0 if jpeg[pos + 4..].starts_with(b"AVI1") => return false,
            SOS => return true,
            _ => pos += 2 + length,
        }
    }
    false
}

/// True when the frame ends with the EOI marker, ignoring the zero padding
/// some cameras append. A frame cut short (a USB hiccup) lacks it, and
/// decoders would otherwise fill the missing part with grey.
pub(crate) fn ends_with_eoi(jpeg: &[u8]) -> bool {
    let end = jpeg.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    jpeg[..end].ends_with(&[0xFF, 0xD9])
}

/// The JPEG with an `AVI1` APP0 segment inserted right after SOI.
fn with_avi1_marker(jpeg: &[u8]) -> Vec<u8> {
    const AVI1_APP0: [u8; 9] = [0xFF, APP0, 0x00, 0x07, b'A', b'V', b'I', b'1', 0x00];
    let mut out = Vec::with_capacity(jpeg.len() + AVI1_APP0.len());
    out.extend_from_slice(&SOI);
    out.extend_from_slice(&AVI1_APP0);
    out.extend_from_slice(&jpeg[2..]);
    out
}

fn expect_len(format: &str, got: usize, expected: usize) -> Result<(), PreprocessError> {
    if got == expected {
        Ok(())
    } else {
        Err(PreprocessError::BadFrame(format!(
            "{format} frame has {got} bytes, expected {expected} for its size"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BT.601 limited range: these YUV triples are the standard 75% colour bars.
    #[test]
    fn yuyv_colour_bars_convert_to_known_rgb() {
        // (Y, U, V) -> expected RGB of 75% bars (white, yellow, cyan, green, magenta, red, blue).
        let bars: [([u8; 3], [u8; 3]); 7] = [
            ([180, 128, 128], [191, 191, 191]),
            ([162, 44, 142], [191, 191, 0]),
            ([131, 156, 44], [0, 191, 191]),
            ([112, 72, 58], [0, 191, 0]),
            ([84, 184, 198], [191, 0, 191]),
            ([65, 100, 212], [191, 0, 0]),
            ([35, 212, 114], [0, 0, 191]),
        ];
        let mut yuyv = Vec::new();
        for ([y, u, v], _) in bars {
            yuyv.extend_from_slice(&[y, u, y, v]);
        }
        let mut rgb = Vec::new();
        yuyv_to_rgb(&yuyv, 14, 1, &mut rgb).unwrap();
        for (i, (_, expected)) in bars.iter().enumerate() {
            for px in 0..2 {
                let got = &rgb[(2 * i + px) * 3..(2 * i + px) * 3 + 3];
                for c in 0..3 {
                    assert!(
                        (got[c] as i32 - expected[c] as i32).abs() <= 2,
                        "bar {i}: got {got:?}, expected {expected:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn yuyv_rejects_wrong_sizes() {
        let mut rgb = Vec::new();
        let err = yuyv_to_rgb(&[0; 10], 4, 2, &mut rgb).unwrap_err();
        assert!(err.to_string().contains("10 bytes, expected 16"), "{err}");
        assert!(yuyv_to_rgb(&[0; 12], 3, 2, &mut rgb)
            .unwrap_err()
            .to_string()
            .contains("odd"));
    }

    #[test]
    fn grey_replicates_channels() {
        let mut rgb = Vec::new();
        grey_to_rgb(&[0, 7, 255, 9], 2, 2, &mut rgb).unwrap();
        assert_eq!(rgb, [0, 0, 0, 7, 7, 7, 255, 255, 255, 9, 9, 9]);
        assert!(grey_to_rgb(&[0; 3], 2, 2, &mut rgb).is_err());
    }
}
