//! The `[capture]` configuration table and its checks.

use super::{CaptureError, PixelFormat};
use serde::{Deserialize, Serialize};
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
    /// How a failed or missing source is retried.
    pub reconnect: ReconnectConfig,
}

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

/// Bounds of `frame_timeout_ms`: at least one frame time at 1 fps, at most
/// ten minutes (V4L2 takes the timeout as an `i32` of milliseconds).
const FRAME_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1..=600_000;

impl CaptureConfig {
    /// Checks what can be checked without touching the device or files.
    pub fn check(&self) -> Result<(), CaptureError> {
        let invalid = |message: String| Err(CaptureError::Config(message));
        if self.width == 0 || self.height == 0 {
            return invalid(format!("size {}x{} is empty", self.width, self.height));
        }
        if !self.fps.is_finite() || self.fps < 0.0 {
            return invalid(format!("fps {} is not a rate", self.fps));
        }
        if self.source == SourceKind::V4l2 && self.fps == 0.0 {
            return invalid("a camera needs fps > 0".into());
        }
        if !FRAME_TIMEOUT_MS.contains(&self.frame_timeout_ms) {
            return invalid(format!(
                "frame_timeout_ms {} is outside {FRAME_TIMEOUT_MS:?}",
                self.frame_timeout_ms
            ));
        }
        let reconnect = &self.reconnect;
        if reconnect.initial_delay_ms == 0 || reconnect.max_delay_ms < reconnect.initial_delay_ms {
            return invalid(format!(
                "reconnect delays need 0 < initial_delay_ms ({}) <= max_delay_ms ({})",
                reconnect.initial_delay_ms, reconnect.max_delay_ms
            ));
        }
        if self.source != SourceKind::V4l2 {
            self.file_path()?;
        }
        if self.source == SourceKind::RawFile {
            self.raw_format()?;
        }
        Ok(())
    }

    /// The `path` of a file source.
    pub(crate) fn file_path(&self) -> Result<&Path, CaptureError> {
        self.path
            .as_deref()
            .ok_or_else(|| CaptureError::Config(format!("source {:?} needs a `path`", self.source)))
    }

    /// The frame format of a `raw_file` source.
    pub(crate) fn raw_format(&self) -> Result<PixelFormat, CaptureError> {
        let format = match self.format {
            FormatPreference::Auto | FormatPreference::Yuyv => PixelFormat::Yuyv,
            FormatPreference::Grey => PixelFormat::Grey8,
            FormatPreference::Rgb => PixelFormat::Rgb8,
            FormatPreference::Mjpeg => {
                return Err(CaptureError::Config(
                    "raw_file frames cannot be MJPEG; use source \"mjpeg_file\"".into(),
                ))
            }
        };
        if format == PixelFormat::Yuyv && !self.width.is_multiple_of(2) {
            return Err(CaptureError::Config(format!(
                "YUYV frames need an even width, got {}",
                self.width
            )));
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
                "needs a `path`",
            ),
            (
                CaptureConfig {
                    source: SourceKind::RawFile,
                    path: Some("x".into()),
                    width: 5,
                    ..Default::default()
                },
                "even width, got 5",
            ),
            (
                CaptureConfig {
                    height: 0,
                    ..Default::default()
                },
                "640x0",
            ),
            (
                CaptureConfig {
                    reconnect: ReconnectConfig {
                        initial_delay_ms: 500,
                        max_delay_ms: 100,
                    },
                    ..Default::default()
                },
                "initial_delay_ms (500) <= max_delay_ms (100)",
            ),
        ];
        for (config, expected) in cases {
            let err = config.check().unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }
}
