//! Frame capture: where frames come from before [`crate::preprocess`].
//!
//! Every source — a V4L2 camera, a directory of images, an MJPEG file or
//! stream, a dump of raw YUYV/GREY/RGB frames — implements [`FrameSource`] and
//! is picked by [`open`] from the `source` key of a [`CaptureConfig`] (the
//! `[capture]` table of the service's TOML file). Sources check each frame
//! cheaply (byte counts, JPEG markers) and report broken ones as
//! [`CaptureError::Corrupt`]; full decoding happens later, in preprocessing.
//!
//! [`Capture`] runs a source on its own thread for the kiosk service: it keeps
//! only the newest frame (stale ones are dropped and counted), skips corrupt
//! frames, and reopens a failed or unplugged source with capped exponential
//! backoff, so the service stays alive while the camera is away.

mod config;
mod frame;
mod image_dir;
mod jpeg;
mod latest;
mod mjpeg_file;
pub mod negotiate;
mod raw_file;
mod reconnect;
mod replay;
mod service;
pub mod still;
mod v4l2;

pub use config::{
    CaptureConfig, FormatPreference, ReconnectConfig, SourceKind, DEFAULT_MAX_FRAME_PIXELS,
};
pub use frame::CapturedFrame;
pub use negotiate::{Interval, StreamFormat};
pub use service::{Capture, CaptureStats, SourceState};

use image_dir::ImageDir;
use mjpeg_file::MjpegFile;
use raw_file::RawFile;
use replay::Replay;
use v4l2::V4l2Source;

pub use crate::preprocess::PixelFormat;

/// Why a source gave no frame. What to do about it depends on the variant.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The source cannot be opened or read now (camera unplugged or failing,
    /// file missing): retry later, with backoff. The message names the
    /// device or file.
    #[error("{0}")]
    Unavailable(String),
    /// One frame was broken (truncated JPEG, wrong byte count): skip it and
    /// count it; the source goes on. The message names the source and frame.
    #[error("corrupt frame: {0}")]
    Corrupt(String),
    /// A file source reached its end (and does not loop).
    #[error("end of stream")]
    EndOfStream,
    /// The configuration cannot work (missing path, zero size, a format the
    /// source cannot carry): retrying will not help.
    #[error("capture config: {0}")]
    Config(#[from] crate::config::InvalidKey),
}

/// A source of frames: a camera, or a file or directory replayed as one.
pub trait FrameSource: Send {
    /// Blocks until the next frame, or says why there is none
    /// (see [`CaptureError`] for what each error asks of the caller).
    fn next_frame(&mut self) -> Result<CapturedFrame, CaptureError>;

    /// A short human-readable name, e.g. `camera /dev/video0 (HD Webcam C525)`.
    fn describe(&self) -> String;

    /// When the next frame is due, for a file replayed at a frame rate: the
    /// capture thread waits until then (a wait a stop cuts short) before it
    /// calls [`FrameSource::next_frame`]. `None`: at once (a camera paces
    /// itself).
    fn next_due(&mut self) -> Option<std::time::Instant> {
        None
    }

    /// The format, size and frame rate the source delivers, when it fixes
    /// one (a camera after negotiation); `None` for mixed-size sources.
    fn stream_format(&self) -> Option<StreamFormat> {
        None
    }
}

/// Opens the source that `config.source` names, configured by `config`.
pub fn open(config: &CaptureConfig) -> Result<Box<dyn FrameSource>, CaptureError> {
    config.check()?;
    Ok(match config.source {
        SourceKind::V4l2 => Box::new(V4l2Source::open(config)?),
        SourceKind::ImageDir => Box::new(Replay::<ImageDir>::open(config)?),
        SourceKind::MjpegFile => Box::new(Replay::<MjpegFile>::open(config)?),
        SourceKind::RawFile => Box::new(Replay::<RawFile>::open(config)?),
    })
}
