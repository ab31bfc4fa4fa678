//! Raw frame dumps: a file of back-to-back YUYV, GREY or RGB frames of the
//! configured size (as `ffmpeg -f rawvideo -pix_fmt yuyv422` writes them).

use super::frame::raw_frame_len;
use super::replay::{open_file, Recording};
use super::{CaptureConfig, CaptureError, CapturedFrame, PixelFormat};
use crate::config::InvalidKey;
use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::PathBuf;

/// Reads one raw frame after another; a short last frame is corrupt.
pub(crate) struct RawFile {
    path: PathBuf,
    reader: BufReader<File>,
    format: PixelFormat,
    width: usize,
    height: usize,
    frame_len: usize,
    frames_read: u64,
}

impl Recording for RawFile {
    fn open(config: &CaptureConfig) -> Result<Self, CaptureError> {
        let path = config.file_path()?;
        let format = config.raw_format()?;
        let (width, height) = (config.width as usize, config.height as usize);
        let frame_len = raw_frame_len(format, width, height).ok_or_else(|| {
            InvalidKey::new("capture.format", format!("{format:?} is not a raw format"))
        })?;
        Ok(RawFile {
            path: path.to_path_buf(),
            reader: BufReader::new(open_file(path, "raw frame file")?),
            format,
            width,
            height,
            frame_len,
            frames_read: 0,
        })
    }

    fn read_frame(&mut self, sequence: u64) -> Result<Option<CapturedFrame>, CaptureError> {
        let mut data = vec![0; self.frame_len];
        let got = read_up_to(&mut self.reader, &mut data).map_err(|e| {
            CaptureError::Unavailable(format!(
                "cannot read raw frame file {}: {e}",
                self.path.display()
            ))
        })?;
        if got == 0 {
            return Ok(None);
        }
        let index = self.frames_read;
        self.frames_read += 1;
        data.truncate(got);
        CapturedFrame::raw(self.format, self.width, self.height, data, sequence)
            .map(Some)
            .map_err(|reason| {
                CaptureError::Corrupt(format!(
                    "{} frame {index}: {reason} (the file ends mid-frame)",
                    self.path.display()
                ))
            })
    }

    fn describe(&self) -> String {
        format!(
            "raw {:?} {}x{} file {}",
            self.format,
            self.width,
            self.height,
            self.path.display()
        )
    }
}

/// Fills `buf` from `reader` until it is full or the input ends; returns
/// how many bytes were read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
