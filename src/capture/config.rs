//! The `[capture]` configuration table and its checks.

use super::PixelFormat;
use crate::config::{in_range, InvalidKey};
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `[capture]` table: which source to read and how.
///
/// ```toml
/// [capture]
/// source = "v4l2"
/// device = "/dev/video0"
/// width = 640
/// height = 480
/// fps = 15
/// format = "auto"
///
/// [capture.reconnect]
/// initial_delay_ms = 250
/// max_delay_ms = 5000
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Where frames come from: `"v4l2"` (a camera, the default), `"image_dir"`
    /// (a directory of .jpg/.jpeg/.png images, in name order), `"mjpeg_file"`
    /// (concatenated JPEGs, as `ffmpeg -f mjpeg` writes; a named pipe works
    /// too) or `"raw_file"` (back-to-back raw frames of `width` x `height`).
    pub source: SourceKind,
    /// The camera's device node, for source `"v4l2"`.
    pub device: PathBuf,
    /// The file or directory to read, for the other sources.
    pub path: Option<PathBuf>,
    /// Frame width in pixels: the camera gets the closest size it offers
    /// (see [`crate::capture::negotiate`]); the width of every `raw_file` frame.
    pub width: u32,
    /// Frame height in pixels, as `width`.
    pub height: u32,
    /// Frames a second: the camera gets the closest rate it offers; file
    /// sources are replayed at this rate (0: as fast as they can be read).
    pub fps: f64,
    /// Pixel format: `"auto"`, `"mjpeg"`, `"yuyv"`, `"grey"` or `"rgb"`. For a
    /// camera, `"auto"` takes MJPEG if offered, else YUYV, GREY, RGB; any
    /// other value insists on that format. For `"raw_file"`, the format of
    /// the frames (`"auto"` means YUYV). Ignored by the other file sources.
    pub format: FormatPreference,
    /// File sources: start again from the first frame at the end instead of
    /// ending the stream.
    pub repeat: bool,
    /// Camera: how long to wait for a frame before treating the camera as
    /// failed and reopening it, in milliseconds.
    pub frame_timeout_ms: u64,
    /// The largest frame accepted, in pixels (width x height): a frame or
    /// image whose header claims more is skipped and counted as corrupt
    /// before anything is decoded, so a hostile file cannot make the service
    /// allocate what its header claims (a 75 KB JPEG can claim 16384 x 16384,
    /// 805 MB of RGB).
    pub max_frame_pixels: u64,
    /// How a failed or missing source is retried.
    pub reconnect: ReconnectConfig,
}

/// Default of `max_frame_pixels`: 3840 x 2160 (4K UHD, the largest frames
/// UVC cameras send), 25 MB of RGB.
pub const DEFAULT_MAX_FRAME_PIXELS: u64 = 3840 * 2160;

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            source: SourceKind::V4l2,
            device: PathBuf::from("/dev/video0"),
            path: None,
            width: 640,
            height: 480,
            fps: 15.0,
            format: FormatPreference::Auto,
            repeat: false,
            frame_timeout_ms: 2000,
            max_frame_pixels: DEFAULT_MAX_FRAME_PIXELS,
            reconnect: ReconnectConfig::default(),
        }
    }
}

/// The `[capture.reconnect]` table: capped exponential backoff between
/// attempts to reopen a failed or missing source.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// Wait before the first retry, in milliseconds; each further failure
    /// doubles the wait.
    pub initial_delay_ms: u64,
    /// The longest wait between retries, in milliseconds.
    pub max_delay_ms: u64,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            initial_delay_ms: 250,
            max_delay_ms: 5000,
        }
    }
}

impl ReconnectConfig {
    /// The wait before the first retry.
    pub fn initial_delay(&self) -> Duration {
        Duration::from_millis(self.initial_delay_ms)
    }

    /// The longest wait between retries.
    pub fn max_delay(&self) -> Duration {
        Duration::from_millis(self.max_delay_ms)
    }
}

/// The kinds of frame source; see [`CaptureConfig::source`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    V4l2,
    ImageDir,
    MjpegFile,
    RawFile,
}

/// The wanted pixel format; see [`CaptureConfig::format`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatPreference {
    Auto,
    Mjpeg,
    Yuyv,
    #[serde(alias = "gray")]
    Grey,
    Rgb,
}

impl FormatPreference {
    /// The acceptable formats, most preferred first.
    pub fn candidates(self) -> &'static [PixelFormat] {
        use PixelFormat::*;
        match self {
            FormatPreference::Auto => &[Mjpeg, Yuyv, Grey8, Rgb8],
            FormatPreference::Mjpeg => &[Mjpeg],
            FormatPreference::Yuyv => &[Yuyv],
            FormatPreference::Grey => &[Grey8],
            FormatPreference::Rgb => &[Rgb8],
        }
    }
}

/// Bounds of `frame_timeout_ms`: at most 5 s, since a stop waits for a
/// stalled camera's read to time out, and the whole stop must fit in the
/// unit's `TimeoutStopSec=15s` with the MQTT flush after it.
const FRAME_TIMEOUT_MS: RangeInclusive<u64> = 1..=5_000;
/// Bounds of a nonzero `fps`: a frame every 100 s to 1000 a second.
const FPS: RangeInclusive<f64> = 0.01..=1000.0;
/// Bounds of `max_frame_pixels`: 64 x 64 to 8192 x 8192 (8K).
const MAX_FRAME_PIXELS: RangeInclusive<u64> = 4096..=8192 * 8192;
/// Bounds of the reconnect delays, milliseconds: an hour at most.
const RECONNECT_DELAY_MS: RangeInclusive<u64> = 1..=3_600_000;

impl CaptureConfig {
    /// Checks what can be checked without touching the device or files; the
    /// error names the key.
    pub fn check(&self) -> Result<(), InvalidKey> {
        in_range(
            "capture.max_frame_pixels",
            self.max_frame_pixels,
            MAX_FRAME_PIXELS,
        )?;
        in_range("capture.width", self.width, 1..=u16::MAX as u32)?;
        in_range("capture.height", self.height, 1..=u16::MAX as u32)?;
        let pixels = u64::from(self.width) * u64::from(self.height);
        if pixels > self.max_frame_pixels {
            return Err(InvalidKey::new(
                "capture.width",
                format!(
                    "{}x{} is more than capture.max_frame_pixels ({})",
                    self.width, self.height, self.max_frame_pixels
                ),
            ));
        }
        if self.fps != 0.0 || self.source == SourceKind::V4l2 {
            in_range("capture.fps", self.fps, FPS)?;
        }
        in_range(
            "capture.frame_timeout_ms",
            self.frame_timeout_ms,
            FRAME_TIMEOUT_MS,
        )?;
        if self.source == SourceKind::V4l2 && self.frame_timeout_ms as f64 <= 1000.0 / self.fps {
            return Err(InvalidKey::new(
                "capture.frame_timeout_ms",
                format!(
                    "{} ms is not longer than a frame at {} fps: a camera would time out \
                     between frames",
                    self.frame_timeout_ms, self.fps
                ),
            ));
        }
        let reconnect = &self.reconnect;
        in_range(
            "capture.reconnect.initial_delay_ms",
            reconnect.initial_delay_ms,
            RECONNECT_DELAY_MS,
        )?;
        in_range(
            "capture.reconnect.max_delay_ms",
            reconnect.max_delay_ms,
            reconnect.initial_delay_ms..=*RECONNECT_DELAY_MS.end(),
        )?;
        if self.source != SourceKind::V4l2 {
            self.file_path()?;
        }
        if self.source == SourceKind::RawFile {
            self.raw_format()?;
        }
        Ok(())
    }

    /// The `path` of a file source.
    pub(crate) fn file_path(&self) -> Result<&Path, InvalidKey> {
        self.path.as_deref().ok_or_else(|| {
            InvalidKey::new(
                "capture.path",
                format!("source {:?} needs a `path`", self.source),
            )
        })
    }

    /// The frame format of a `raw_file` source.
    pub(crate) fn raw_format(&self) -> Result<PixelFormat, InvalidKey> {
        let format = match self.format {
            FormatPreference::Auto | FormatPreference::Yuyv => PixelFormat::Yuyv,
            FormatPreference::Grey => PixelFormat::Grey8,
            FormatPreference::Rgb => PixelFormat::Rgb8,
            FormatPreference::Mjpeg => {
                return Err(InvalidKey::new(
                    "capture.format",
                    "raw_file frames cannot be MJPEG; use source \"mjpeg_file\"",
                ))
            }
        };
        if format == PixelFormat::Yuyv && !self.width.is_multiple_of(2) {
            return Err(InvalidKey::new(
                "capture.width",
                format!("YUYV frames need an even width, got {}", self.width),
            ));
        }
        Ok(format)
    }

    /// The time between frames when replaying a file, if paced.
    pub(crate) fn replay_period(&self) -> Option<Duration> {
        (self.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / self.fps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_table_with_every_key_parses() {
        let config: CaptureConfig = toml::from_str(
            r#"
            source = "raw_file"
            device = "/dev/video2"
            path = "dump.yuyv"
            width = 320
            height = 240
            fps = 7.5
            format = "gray"
            repeat = true
            frame_timeout_ms = 500
            [reconnect]
            initial_delay_ms = 100
            max_delay_ms = 800
            "#,
        )
        .unwrap();
        assert_eq!(config.source, SourceKind::RawFile);
        assert_eq!(config.format, FormatPreference::Grey);
        assert_eq!(config.path.as_deref(), Some(Path::new("dump.yuyv")));
        assert_eq!(config.reconnect.max_delay(), Duration::from_millis(800));
        assert!(config.repeat);
        config.check().unwrap();
    }

    #[test]
    fn empty_table_gives_the_defaults() {
        let config: CaptureConfig = toml::from_str("").unwrap();
        assert_eq!(config, CaptureConfig::default());
        assert_eq!(config.device, Path::new("/dev/video0"));
        assert_eq!((config.width, config.height, config.fps), (640, 480, 15.0));
        config.check().unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected_at_every_level() {
        let top = toml::from_str::<CaptureConfig>("devcie = \"/dev/video1\"").unwrap_err();
        assert!(top.to_string().contains("devcie"), "{top}");
        let nested = toml::from_str::<CaptureConfig>("[reconnect]\nmax_delay = 3").unwrap_err();
        assert!(nested.to_string().contains("max_delay"), "{nested}");
    }

    #[test]
    fn check_names_the_problem() {
        let cases = [
            (
                CaptureConfig {
                    source: SourceKind::MjpegFile,
                    ..Default::default()
                },
                "`capture.path`: source MjpegFile needs a `path`",
            ),
            (
                CaptureConfig {
                    source: SourceKind::RawFile,
                    path: Some("x".into()),
                    width: 5,
                    ..Default::default()
                },
                "`capture.width`: YUYV frames need an even width, got 5",
            ),
            (
                CaptureConfig {
                    height: 0,
                    ..Default::default()
                },
                "`capture.height`: 0 is not in [1, 65535]",
            ),
            (
                CaptureConfig {
                    reconnect: ReconnectConfig {
                        initial_delay_ms: 500,
                        max_delay_ms: 100,
                    },
                    ..Default::default()
                },
                "`capture.reconnect.max_delay_ms`: 100 is not in [500, 3600000]",
            ),
            (
                CaptureConfig {
                    fps: 1e-300,
                    ..Default::default()
                },
                "`capture.fps`: 1e-300 is not in [0.01, 1000.0]",
            ),
            (
                CaptureConfig {
                    width: 4096,
                    height: 4096,
                    ..Default::default()
                },
                "4096x4096 is more than capture.max_frame_pixels (8294400)",
            ),
        ];
        for (config, expected) in cases {
            let err = config.check().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
