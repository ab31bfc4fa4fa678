//! MJPEG files and streams: concatenated JPEG images, as `ffmpeg -f mjpeg`
//! writes them, read from a file or a named pipe and split on their markers.

use super::jpeg::{split_first, Split, JPEG_START};
use super::replay::{open_file, Recording};
use super::{CaptureConfig, CaptureError, CapturedFrame};
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::PathBuf;

/// Bytes asked of the file at a time (more when a frame is larger).
const READ_CHUNK: usize = 64 * 1024;
/// A frame still without its end-of-image marker after this many bytes is
/// treated as broken, so a stream of garbage cannot fill the memory.
const MAX_FRAME_BYTES: usize = 32 << 20;

/// Splits a byte stream into JPEG frames. Broken frames (cut short, bad
/// markers) and stray bytes between frames are reported as corrupt and
/// skipped; zero padding between frames is ignored.
pub(crate) struct MjpegFile {
    path: PathBuf,
    file: File,
    /// Bytes read but not yet returned, starting at file offset `offset`.
    buf: Vec<u8>,
    offset: u64,
    at_eof: bool,
    /// Skipping the rest of a broken frame: its bytes are not stray.
    skipping_broken_frame: bool,
    frames_seen: u64,
    max_pixels: u64,
}

impl Recording for MjpegFile {
    fn open(config: &CaptureConfig) -> Result<Self, CaptureError> {
        let path = config.file_path()?;
        Ok(MjpegFile {
            path: path.to_path_buf(),
            file: open_file(path, "MJPEG file")?,
            buf: Vec::new(),
            offset: 0,
            at_eof: false,
            skipping_broken_frame: false,
            frames_seen: 0,
            max_pixels: config.max_frame_pixels,
        })
    }

    fn read_frame(&mut self, sequence: u64) -> Result<Option<CapturedFrame>, CaptureError> {
        if let Some(stray) = self.align_on_jpeg_start()? {
            return Err(self.corrupt(format!(
                "{stray} bytes that are not JPEG before byte {}",
                self.offset
            )));
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let index = self.frames_seen;
        self.frames_seen += 1;
        let start = self.offset;
        let broken = |reason: String| format!("frame {index} at byte {start}: {reason}");
        loop {
            match split_first(&self.buf) {
                Split::Whole(len) => {
                    let data = self.buf[..len].to_vec();
                    self.consume(len);
                    return CapturedFrame::mjpeg(data, sequence, self.max_pixels)
                        .map(Some)
                        .map_err(|reason| self.corrupt(broken(reason)));
                }
                Split::Broken(reason) => return Err(self.skip_broken_frame(broken(reason))),
                Split::Incomplete if self.at_eof => {
                    let len = self.buf.len();
                    self.consume(len);
                    let reason = format!("truncated: the stream ends {len} bytes into it");
                    return Err(self.corrupt(broken(reason)));
                }
                Split::Incomplete if self.buf.len() > MAX_FRAME_BYTES => {
                    let reason = format!("no end-of-image marker within {MAX_FRAME_BYTES} bytes");
                    return Err(self.skip_broken_frame(broken(reason)));
                }
                Split::Incomplete => self.read_more()?,
            }
        }
    }

    fn describe(&self) -> String {
        format!("MJPEG file {}", self.path.display())
    }
}

impl MjpegFile {
    /// Drops the bytes before the next JPEG start, reading as needed; the
    /// buffer is left empty only at the end of the stream. Returns how many
    /// stray bytes were dropped (not counting zero padding or the rest of a
    /// broken frame), if any.
    fn align_on_jpeg_start(&mut self) -> Result<Option<usize>, CaptureError> {
        let mut stray = 0;
        loop {
            let found = self
                .buf
                .windows(JPEG_START.len())
                .position(|w| w == JPEG_START);
            // Without a match, keep a tail that may be the start of one.
            let keep = if self.at_eof { 0 } else { JPEG_START.len() - 1 };
            let drop = found.unwrap_or(self.buf.len().saturating_sub(keep));
            let dropped = &self.buf[..drop];
            if !self.skipping_broken_frame && dropped.iter().any(|&b| b != 0) {
                stray += drop;
            }
            self.consume(drop);
            if found.is_some() {
                self.skipping_broken_frame = false;
            }
            if found.is_some() || self.at_eof {
                return Ok((stray > 0).then_some(stray));
            }
            self.read_more()?;
        }
    }

    /// Drops the SOI of a broken frame, so that the search for the next
    /// frame starts after it, and reports it.
    fn skip_broken_frame(&mut self, reason: String) -> CaptureError {
        self.consume(2);
        self.skipping_broken_frame = true;
        self.corrupt(reason)
    }

    fn consume(&mut self, len: usize) {
        self.buf.drain(..len);
        self.offset += len as u64;
    }

    /// Appends at least [`READ_CHUNK`] bytes' worth of reading (doubling
    /// with the buffer, so long frames are rescanned a bounded number of
    /// times), or notes the end of the stream.
    fn read_more(&mut self) -> Result<(), CaptureError> {
        let old_len = self.buf.len();
        self.buf.resize(old_len + old_len.max(READ_CHUNK), 0);
        let result = loop {
            match self.file.read(&mut self.buf[old_len..]) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match result {
            Ok(n) => {
                self.buf.truncate(old_len + n);
                self.at_eof = n == 0;
                Ok(())
            }
            Err(e) => {
                self.buf.truncate(old_len);
                Err(CaptureError::Unavailable(format!(
                    "cannot read MJPEG file {}: {e}",
                    self.path.display()
                )))
            }
        }
    }

    fn corrupt(&self, reason: String) -> CaptureError {
        CaptureError::Corrupt(format!("{}: {reason}", self.path.display()))
    }
}
