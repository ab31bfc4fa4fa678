//! A directory of images replayed as frames, in file-name order: JPEGs pass
//! through as MJPEG frames (decoded later, in preprocessing); PNGs, which no
//! camera sends, are decoded here to RGB.

use super::replay::Recording;
use super::still;
use super::{CaptureConfig, CaptureError, CapturedFrame, PixelFormat};
use std::path::{Path, PathBuf};

/// The images of a directory, listed once when opened.
pub(crate) struct ImageDir {
    dir: PathBuf,
    images: Vec<PathBuf>,
    next: usize,
    max_pixels: u64,
}

impl Recording for ImageDir {
    fn open(config: &CaptureConfig) -> Result<Self, CaptureError> {
        let dir = config.file_path()?;
        let unreadable = |e: std::io::Error| {
            CaptureError::Unavailable(format!(
                "cannot read image directory {}: {e}",
                dir.display()
            ))
        };
        let mut images = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(unreadable)? {
            let path = entry.map_err(unreadable)?.path();
            if image_kind(&path).is_some() {
                images.push(path);
            }
        }
        if images.is_empty() {
            return Err(CaptureError::Unavailable(format!(
                "image directory {} holds no .jpg, .jpeg or .png file",
                dir.display()
            )));
        }
        images.sort();
        Ok(ImageDir {
            dir: dir.to_path_buf(),
            images,
            next: 0,
            max_pixels: config.max_frame_pixels,
        })
    }

    fn read_frame(&mut self, sequence: u64) -> Result<Option<CapturedFrame>, CaptureError> {
        let Some(path) = self.images.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        let corrupt =
            |reason: String| CaptureError::Corrupt(format!("{}: {reason}", path.display()));
        let bytes = still::read_image_file(path, self.max_pixels).map_err(corrupt)?;
        let frame = match image_kind(path) {
            Some(ImageKind::Png) => {
                let rgb = still::decode_png(&bytes, self.max_pixels).map_err(corrupt)?;
                let (width, height) = (rgb.width() as usize, rgb.height() as usize);
                CapturedFrame::raw(PixelFormat::Rgb8, width, height, rgb.into_raw(), sequence)
            }
            _ => CapturedFrame::mjpeg(bytes, sequence, self.max_pixels),
        };
        frame.map(Some).map_err(corrupt)
    }

    fn describe(&self) -> String {
        format!(
            "image directory {} ({} images)",
            self.dir.display(),
            self.images.len()
        )
    }
}

enum ImageKind {
    Jpeg,
    Png,
}

/// The kind of image a file name says it holds, if one this source reads.
fn image_kind(path: &Path) -> Option<ImageKind> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    match extension.as_str() {
        "jpg" | "jpeg" => Some(ImageKind::Jpeg),
        "png" => Some(ImageKind::Png),
        _ => None,
    }
}
