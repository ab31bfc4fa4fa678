//! One captured frame, owned, and the cheap checks every source applies to it.

use super::{jpeg, PixelFormat};
use crate::preprocess::Frame;
use std::time::Instant;

/// One frame as a source delivered it, checked cheaply: raw frames have the
/// exact byte count of their size, MJPEG frames start with SOI, end with EOI
/// and carry a frame header (their size comes from it).
#[derive(Clone, Debug)]
pub struct CapturedFrame {
    pub format: PixelFormat,
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
    /// The frame's position in its source's stream (the driver's sequence
    /// number for a camera); gaps mean frames lost before they reached us.
    pub sequence: u64,
    /// When the frame was read from its source.
    pub captured_at: Instant,
}

impl CapturedFrame {
    /// A raw (YUYV, GREY, RGB) frame of `width` x `height`; the error says
    /// what is wrong with its byte count.
    pub fn raw(
        format: PixelFormat,
        width: usize,
        height: usize,
        data: Vec<u8>,
        sequence: u64,
    ) -> Result<Self, String> {
        let expected = raw_frame_len(format, width, height)
            .ok_or_else(|| format!("{format:?} is not a raw pixel format"))?;
        if data.len() != expected {
            return Err(format!(
                "{format:?} frame has {} bytes, expected {expected} for {width}x{height}",
                data.len()
            ));
        }
        Ok(Self::new(format, width, height, data, sequence))
    }

    /// An MJPEG frame (one JPEG image), its size read from its header; the
    /// error says what is wrong with its markers, or that the header claims
    /// more than `max_pixels` (checked before anything is decoded).
    pub fn mjpeg(data: Vec<u8>, sequence: u64, max_pixels: u64) -> Result<Self, String> {
        let (width, height) = jpeg_size_within(&data, max_pixels)?;
        Ok(Self::new(PixelFormat::Mjpeg, width, height, data, sequence))
    }

    fn new(format: PixelFormat, width: usize, height: usize, data: Vec<u8>, sequence: u64) -> Self {
        CapturedFrame {
            format,
            width,
            height,
            data,
            sequence,
            captured_at: Instant::now(),
        }
    }

    /// The frame, borrowed, as [`crate::preprocess::Preprocessor::run`] takes it.
    pub fn frame(&self) -> Frame<'_> {
        Frame {
            format: self.format,
            width: self.width,
            height: self.height,
            data: &self.data,
        }
    }
}

/// The size of a whole JPEG (markers checked by [`jpeg::check`]) whose
/// header claims at most `max_pixels`: what a JPEG must be to be decoded.
pub(crate) fn jpeg_size_within(jpeg: &[u8], max_pixels: u64) -> Result<(usize, usize), String> {
    let (width, height) = jpeg::check(jpeg)?;
    check_pixels(width, height, max_pixels)?;
    Ok((width, height))
}

/// Refuses an image of `width` x `height` above `max_pixels` (the
/// `capture.max_frame_pixels` key, or `detect --max-pixels`).
pub(crate) fn check_pixels(width: usize, height: usize, max_pixels: u64) -> Result<(), String> {
    let pixels = width as u64 * height as u64;
    if pixels > max_pixels {
        return Err(format!(
            "{width}x{height} ({:.1} megapixels) is above the limit of {:.1} megapixels \
             (capture.max_frame_pixels; detect --max-pixels)",
            pixels as f64 / 1e6,
            max_pixels as f64 / 1e6
        ));
    }
    Ok(())
}

/// Bytes in one packed raw frame, or `None` for MJPEG (variable length).
pub(crate) fn raw_frame_len(format: PixelFormat, width: usize, height: usize) -> Option<usize> {
    let bytes_per_pixel = match format {
        PixelFormat::Rgb8 => 3,
        PixelFormat::Yuyv => 2,
        PixelFormat::Grey8 => 1,
        PixelFormat::Mjpeg => return None,
    };
    Some(width * height * bytes_per_pixel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frames_need_their_exact_byte_count() {
        let frame = CapturedFrame::raw(PixelFormat::Yuyv, 4, 2, vec![0; 16], 7).unwrap();
        assert_eq!((frame.width, frame.height, frame.sequence), (4, 2, 7));
        let err = CapturedFrame::raw(PixelFormat::Yuyv, 4, 2, vec![0; 15], 0).unwrap_err();
        assert!(err.contains("15 bytes, expected 16 for 4x2"), "{err}");
        assert!(CapturedFrame::raw(PixelFormat::Grey8, 3, 3, vec![0; 9], 0).is_ok());
        assert!(CapturedFrame::raw(PixelFormat::Rgb8, 3, 3, vec![0; 9], 0).is_err());
        assert!(CapturedFrame::raw(PixelFormat::Mjpeg, 3, 3, vec![0; 9], 0).is_err());
    }
}
