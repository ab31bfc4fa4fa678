//! Preprocessing: camera frame -> the network's input tensor.
//!
//! Frames (RGB, GREY, raw YUYV or MJPEG) are converted to RGB8, letterboxed
//! to the model's input size keeping their aspect ratio, and normalised with
//! the ImageNet mean and standard deviation into an NCHW f32 tensor. The
//! letterbox is defined once, in `training/fer_edge_training/preprocess.py`;
//! this is a bit-for-bit-minded reimplementation, checked against golden
//! tensors that Python wrote.

mod convert;

pub(crate) use convert::ends_with_eoi;
pub use convert::{grey_to_rgb, mjpeg_to_rgb, yuyv_to_rgb};

use tract_core::prelude::Tensor;

/// ImageNet channel means (RGB), on the 0..1 scale.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB), on the 0..1 scale.
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Value of the letterbox padding, on the 0..255 scale.
pub const PAD_VALUE: f32 = 128.0;

/// A problem with an input frame or image.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("bad frame: {0}")]
    BadFrame(String),
}

/// How the bytes of a [`Frame`] encode its pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// Packed 8-bit RGB, 3 bytes a pixel.
    Rgb8,
    /// 8-bit luminance, 1 byte a pixel.
    Grey8,
    /// Packed YUV 4:2:2 (`Y0 U Y1 V`), 2 bytes a pixel.
    Yuyv,
    /// One JPEG image (a Motion-JPEG frame); its size comes from its header.
    Mjpeg,
}

/// One camera frame or image, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub format: PixelFormat,
    pub width: usize,
    pub height: usize,
    pub data: &'a [u8],
}

/// Converts any frame to packed RGB8 in `rgb`; returns its width and height.
pub fn frame_to_rgb(frame: &Frame, rgb: &mut Vec<u8>) -> Result<(usize, usize), PreprocessError> {
    match frame.format {
        PixelFormat::Rgb8 => {
            check_rgb_len(frame)?;
            rgb.clear();
            rgb.extend_from_slice(frame.data);
        }
        PixelFormat::Grey8 => grey_to_rgb(frame.data, frame.width, frame.height, rgb)?,
        PixelFormat::Yuyv => yuyv_to_rgb(frame.data, frame.width, frame.height, rgb)?,
        PixelFormat::Mjpeg => {
            // Width 0: the caller did not read the header (a trusted file).
            let declared = (frame.width > 0).then_some((frame.width, frame.height));
            return mjpeg_to_rgb(frame.data, declared, rgb);
        }
    }
    Ok((frame.width, frame.height))
}

fn check_rgb_len(frame: &Frame) -> Result<(), PreprocessError> {
    let expected = frame.width * frame.height * 3;
    if frame.data.len() != expected {
        return Err(PreprocessError::BadFrame(format!(
            "RGB frame has {} bytes, expected {expected} for {}x{}",
            frame.data.len(),
            frame.width,
            frame.height
        )));
    }
    Ok(())
}

/// How an image was placed into the network input: scaled by `scale` and put
/// at the top-left corner. Maps boxes back to the source image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Letterbox {
    pub scale: f32,
    pub source_width: usize,
    pub source_height: usize,
}

impl Letterbox {
    /// Maps a box from network-input pixels back to source-image pixels,
    /// clipped to the image.
    pub fn to_source(&self, bbox: [f32; 4]) -> [f32; 4] {
        let (w, h) = (self.source_width as f32, self.source_height as f32);
        [
            (bbox[0] / self.scale).clamp(0.0, w),
            (bbox[1] / self.scale).clamp(0.0, h),
            (bbox[2] / self.scale).clamp(0.0, w),
            (bbox[3] / self.scale).clamp(0.0, h),
        ]
    }
}

/// Turns frames into network inputs of one fixed size, reusing its buffers.
#[derive(Debug)]
pub struct Preprocessor {
    input_height: usize,
    input_width: usize,
    rgb: Vec<u8>,
}

impl Preprocessor {
    /// A preprocessor for a network input of `input_height` x `input_width`.
    pub fn new(input_height: usize, input_width: usize) -> Self {
        Preprocessor {
            input_height,
            input_width,
            rgb: Vec::new(),
        }
    }

    /// Converts, letterboxes and normalises one frame into a `[1, 3, H, W]` tensor.
    pub fn run(&mut self, frame: &Frame) -> Result<(Tensor, Letterbox), PreprocessError> {
        if frame.format == PixelFormat::Rgb8 {
            check_rgb_len(frame)?;
            return self.letterbox(frame.data, frame.width, frame.height);
        }
        let (width, height) = frame_to_rgb(frame, &mut self.rgb)?;
        let rgb = std::mem::take(&mut self.rgb);
        let result = self.letterbox(&rgb, width, height);
        self.rgb = rgb;
        result
    }

    /// Letterboxes a packed RGB8 image; see the module documentation.
    pub fn letterbox(
        &self,
        rgb: &[u8],
        width: usize,
        height: usize,
    ) -> Result<(Tensor, Letterbox), PreprocessError> {
        if width == 0 || height == 0 {
            return Err(PreprocessError::BadFrame(format!(
                "image is {width}x{height}"
            )));
        }
        let (out_h, out_w) = (self.input_height, self.input_width);
        let scale = (out_h as f32 / height as f32).min(out_w as f32 / width as f32);
        let new_w = ((width as f32 * scale + 0.5).floor() as usize).clamp(1, out_w);
        let new_h = ((height as f32 * scale + 0.5).floor() as usize).clamp(1, out_h);
        let columns = BilinearTaps::new(width, new_w);
        let rows = BilinearTaps::new(height, new_h);

        let plane = out_h * out_w;
        let mut data = vec![0f32; 3 * plane];
        for c in 0..3 {
            let pad = (PAD_VALUE / 255.0 - MEAN[c]) / STD[c];
            data[c * plane..(c + 1) * plane].fill(pad);
        }
        let gain: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * STD[c]));
        let offset: [f32; 3] = std::array::from_fn(|c| MEAN[c] / STD[c]);
        let stride = width * 3;
        for (y, &(y0, y1, fy)) in rows.taps.iter().enumerate() {
            let (top, bottom) = (&rgb[y0 * stride..][..stride], &rgb[y1 * stride..][..stride]);
            for (x, &(x0, x1, fx)) in columns.taps.iter().enumerate() {
                for c in 0..3 {
                    let lerp = |row: &[u8]| {
                        let (a, b) = (row[x0 * 3 + c] as f32, row[x1 * 3 + c] as f32);
                        a + (b - a) * fx
                    };
                    let (t, b) = (lerp(top), lerp(bottom));
                    let value = t + (b - t) * fy;
                    data[c * plane + y * out_w + x] = value * gain[c] - offset[c];
                }
            }
        }
        let tensor = Tensor::from_shape(&[1, 3, out_h, out_w], &data)
            .expect("buffer length matches the shape by construction");
        let letterbox = Letterbox {
            scale,
            source_width: width,
            source_height: height,
        };
        Ok((tensor, letterbox))
    }
}

/// For each output coordinate of a 1-D bilinear resize with half-pixel
/// centres: the two source indices and the weight of the second.
struct BilinearTaps {
    taps: Vec<(usize, usize, f32)>,
}

impl BilinearTaps {
    fn new(source_len: usize, output_len: usize) -> Self {
        let ratio = source_len as f32 / output_len as f32;
        let last = (source_len - 1) as f32;
        let taps = (0..output_len)
            .map(|o| {
                let s = ((o as f32 + 0.5) * ratio - 0.5).clamp(0.0, last);
                let i0 = s.floor() as usize;
                (i0, (i0 + 1).min(source_len - 1), s - i0 as f32)
            })
            .collect();
        BilinearTaps { taps }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(t: &Tensor, c: usize, y: usize, x: usize) -> f32 {
        let view = t.to_plain_array_view::<f32>().unwrap();
        view[[0, c, y, x]]
    }

    fn unnormalise(v: f32, c: usize) -> f32 {
        (v * STD[c] + MEAN[c]) * 255.0
    }

    #[test]
    fn letterbox_keeps_aspect_and_pads_bottom_right() {
        // A 40x20 image of constant colour into 32x32: scale 0.8, 32x16 content.
        let rgb: Vec<u8> = std::iter::repeat_n([200u8, 100, 50], 40 * 20)
            .flatten()
            .collect();
        let pre = Preprocessor::new(32, 32);
        let (t, lb) = pre.letterbox(&rgb, 40, 20).unwrap();
        assert_eq!(t.shape(), &[1, 3, 32, 32]);
        assert!((lb.scale - 0.8).abs() < 1e-6);
        for (c, expected) in [200.0, 100.0, 50.0].into_iter().enumerate() {
            assert!((unnormalise(channel(&t, c, 15, 31), c) - expected).abs() < 1e-3);
            assert!((unnormalise(channel(&t, c, 16, 0), c) - PAD_VALUE).abs() < 1e-3);
            assert!((unnormalise(channel(&t, c, 31, 31), c) - PAD_VALUE).abs() < 1e-3);
        }
        assert_eq!(lb.to_source([0.0, 0.0, 32.0, 16.0]), [0.0, 0.0, 40.0, 20.0]);
    }

    #[test]
    fn bilinear_taps_use_half_pixel_centres() {
        // Upscaling 2 -> 4: centres at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped to 1).
        let taps = BilinearTaps::new(2, 4).taps;
        assert_eq!(taps[0], (0, 1, 0.0));
        assert_eq!(taps[1], (0, 1, 0.25));
        assert_eq!(taps[2], (0, 1, 0.75));
        assert_eq!(taps[3], (1, 1, 0.0));
    }

    #[test]
    fn rejects_short_rgb_frames() {
        let mut pre = Preprocessor::new(8, 8);
        let frame = Frame {
            format: PixelFormat::Rgb8,
            width: 4,
            height: 4,
            data: &[0; 47],
        };
        let err = pre.run(&frame).unwrap_err().to_string();
        assert!(err.contains("47 bytes, expected 48"), "{err}");
    }
}
