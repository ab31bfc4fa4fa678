//! JPEG marker-level checks: is a buffer one whole JPEG, how big is its image,
//! and where does the first JPEG of an MJPEG stream end. No decoding.

use crate::preprocess::ends_with_eoi;

const SOI: [u8; 2] = [0xFF, 0xD8];
const SOI_MARKER: u8 = 0xD8;
const EOI_MARKER: u8 = 0xD9;
const SOS_MARKER: u8 = 0xDA;

/// What a JPEG starts with: SOI, then the first segment's marker.
pub(crate) const JPEG_START: [u8; 3] = [0xFF, 0xD8, 0xFF];

/// Checks the markers of one JPEG image (SOI first, EOI last, a frame header
/// before the first scan) and returns its width and height. Zero padding
/// after EOI, which some cameras append, is accepted.
pub(crate) fn check(jpeg: &[u8]) -> Result<(usize, usize), String> {
    if !jpeg.starts_with(&SOI) {
        return Err("no JPEG start-of-image marker".into());
    }
    if !ends_with_eoi(jpeg) {
        return Err(format!(
            "truncated JPEG of {} bytes: no end-of-image marker",
            jpeg.len()
        ));
    }
    dimensions(jpeg)
}

/// The image size from the frame header (SOFn) of a JPEG.
fn dimensions(jpeg: &[u8]) -> Result<(usize, usize), String> {
    let mut pos = SOI.len();
    loop {
        let Some(&[0xFF, marker]) = jpeg.get(pos..pos + 2) else {
            return Err(format!("JPEG header broken at byte {pos}"));
        };
        match marker {
            0xFF => pos += 1, // fill byte
            _ if is_standalone(marker) => pos += 2,
            SOI_MARKER | EOI_MARKER | SOS_MARKER => {
                return Err("JPEG has no frame header before its image data".into())
            }
            _ if is_frame_header(marker) => {
                let (Some(height), Some(width)) = (be16(jpeg, pos + 5), be16(jpeg, pos + 7)) else {
                    return Err("JPEG frame header is cut short".into());
                };
                if width == 0 || height == 0 {
                    return Err(format!("JPEG frame header gives size {width}x{height}"));
                }
                return Ok((width, height));
            }
            _ => {
                let length = be16(jpeg, pos + 2)
                    .ok_or_else(|| format!("JPEG header broken at byte {pos}"))?;
                pos += 2 + length;
            }
        }
    }
}

/// Where the first JPEG of a buffer that starts with SOI ends.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Split {
    /// `buf[..n]` is one whole JPEG, SOI to EOI.
    Whole(usize),
    /// The JPEG at the start is broken (cut short by a new SOI, or its
    /// markers make no sense): skip to the next SOI.
    Broken(String),
    /// The JPEG goes on past the end of the buffer.
    Incomplete,
}

/// Finds the end of the JPEG at the start of `buf` by walking its segments
/// and scanning its entropy-coded data for the next marker, so an EOI inside
/// an embedded thumbnail or a `0xFF 0xD9` in a header does not end it early.
pub(crate) fn split_first(buf: &[u8]) -> Split {
    debug_assert!(buf.starts_with(&SOI));
    let mut pos = SOI.len();
    loop {
        let Some(&[prefix, marker]) = buf.get(pos..pos + 2) else {
            return Split::Incomplete;
        };
        if prefix != 0xFF {
            return Split::Broken(format!("no JPEG marker at byte {pos} of the frame"));
        }
        match marker {
            0xFF => pos += 1, // fill byte
            EOI_MARKER => return Split::Whole(pos + 2),
            SOI_MARKER => {
                return Split::Broken(format!(
                    "cut short after {pos} bytes: a new image starts before its end-of-image marker"
                ))
            }
            _ if is_standalone(marker) => pos += 2,
            _ => {
                let Some(length) = be16(buf, pos + 2) else {
                    return Split::Incomplete;
                };
                if length < 2 {
                    return Split::Broken(format!(
                        "JPEG segment at byte {pos} has length {length}"
                    ));
                }
                pos += 2 + length;
                if marker == SOS_MARKER {
                    match next_marker_after_entropy_data(buf, pos) {
                        Some(next) => pos = next,
                        None => return Split::Incomplete,
                    }
                }
            }
        }
    }
}

/// The position of the first marker at or after `from` in entropy-coded
/// data, where `0xFF 0x00` is a stuffed byte and RSTn markers belong to it.
fn next_marker_after_entropy_data(buf: &[u8], from: usize) -> Option<usize> {
    let mut pos = from;
    loop {
        pos += buf.get(pos..)?.iter().position(|&b| b == 0xFF)?;
        match *buf.get(pos + 1)? {
            0x00 | 0xD0..=0xD7 => pos += 2,
            0xFF => pos += 1,
            _ => return Some(pos),
        }
    }
}

/// Markers without a length field: RST0..RST7 and TEM.
fn is_standalone(marker: u8) -> bool {
    matches!(marker, 0xD0..=0xD7 | 0x01)
}

/// SOF0..SOF15, less DHT (C4), JPG (C8) and DAC (CC).
fn is_frame_header(marker: u8) -> bool {
    matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

fn be16(buf: &[u8], pos: usize) -> Option<usize> {
    let bytes = buf.get(pos..pos + 2)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EOI: [u8; 2] = [0xFF, 0xD9];

    /// A minimal JPEG by structure (not decodable): SOI, APP0 that holds a
    /// fake `FF D9`, SOF0 of 3x2, SOS, entropy data with a stuffed byte and
    /// an RST marker, EOI.
    fn structural_jpeg() -> Vec<u8> {
        let mut jpeg = SOI.to_vec();
        jpeg.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x06, 0xFF, 0xD9, 0x00, 0x00]);
        jpeg.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 8, 0, 2, 0, 3, 1, 1, 0x11, 0]);
        jpeg.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 1, 1, 0, 0, 63, 0]);
        jpeg.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56]);
        jpeg.extend_from_slice(&EOI);
        jpeg
    }

    #[test]
    fn check_reads_the_frame_header_and_accepts_zero_padding() {
        let mut jpeg = structural_jpeg();
        assert_eq!(check(&jpeg), Ok((3, 2)));
        jpeg.extend_from_slice(&[0, 0, 0]);
        assert_eq!(check(&jpeg), Ok((3, 2)));
    }

    #[test]
    fn check_rejects_missing_markers() {
        let jpeg = structural_jpeg();
        assert!(check(&jpeg[..jpeg.len() - 1])
            .unwrap_err()
            .contains("no end-of-image"));
        assert!(check(&jpeg[1..]).unwrap_err().contains("no JPEG start"));
        let mut no_sof = SOI.to_vec();
        no_sof.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0xFF, 0xD9]);
        assert!(check(&no_sof).unwrap_err().contains("no frame header"));
    }

    #[test]
    fn split_skips_fake_eoi_stuffed_bytes_and_restart_markers() {
        let jpeg = structural_jpeg();
        let mut stream = jpeg.clone();
        stream.extend_from_slice(&jpeg);
        assert_eq!(split_first(&stream), Split::Whole(jpeg.len()));
        for cut in 2..jpeg.len() {
            assert_eq!(split_first(&jpeg[..cut]), Split::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn split_reports_an_image_cut_short_by_the_next() {
        let jpeg = structural_jpeg();
        let mut stream = jpeg[..jpeg.len() - 4].to_vec();
        stream.extend_from_slice(&jpeg);
        assert!(
            matches!(split_first(&stream), Split::Broken(reason) if reason.contains("cut short"))
        );
    }
}
