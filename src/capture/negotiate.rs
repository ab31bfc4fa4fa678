//! Choosing a camera mode: given what a V4L2 device advertises (formats,
//! frame sizes, frame intervals) and the wanted [`CaptureConfig`], pick one
//! format, size and frame rate. Pure, so it is tested without a camera.
//!
//! The rules, in order of priority:
//! 1. only formats fer-edge reads (MJPEG, YUYV, GREY, RGB), restricted to
//!    the configured one unless the config says `"auto"`;
//! 2. the wanted size exactly, else the smallest size that covers it (the
//!    frame is scaled down to the network anyway), else the largest smaller;
//! 3. a frame rate of at least the wanted one;
//! 4. the format preference (MJPEG, then YUYV, GREY, RGB);
//! 5. the frame rate closest to the wanted one.
//!
//! The frame rate of a size is the lowest advertised rate that reaches the
//! wanted one, else the highest; a continuous range gives the wanted rate
//! clamped into it.

use super::{CaptureConfig, PixelFormat};
use std::fmt;

/// A frame interval: seconds per frame as a fraction, as V4L2 gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub numerator: u32,
    pub denominator: u32,
}

impl Interval {
    /// The interval of `fps` frames a second, exact to a thousandth of a frame.
    pub fn from_fps(fps: f64) -> Self {
        let (numerator, denominator) = (1000, (fps * 1000.0).round().max(1.0) as u32);
        let divisor = gcd(numerator, denominator);
        Interval {
            numerator: numerator / divisor,
            denominator: denominator / divisor,
        }
    }

    /// Frames a second.
    pub fn fps(self) -> f64 {
        self.denominator as f64 / self.numerator.max(1) as f64
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The frame intervals a device offers for one format and size.
#[derive(Clone, Debug, PartialEq)]
pub enum IntervalOffer {
    Discrete(Interval),
    /// Every interval from `shortest` (fastest) to `longest` (slowest).
    Range {
        shortest: Interval,
        longest: Interval,
    },
}

/// One frame size a device offers for a format, with its frame intervals
/// (empty when the driver does not enumerate them).
#[derive(Clone, Debug, PartialEq)]
pub struct SizeOffer {
    pub width: u32,
    pub height: u32,
    pub intervals: Vec<IntervalOffer>,
}

/// A range of frame sizes (`V4L2_FRMSIZE_TYPE_STEPWISE`/`CONTINUOUS`), as
/// CSI camera drivers advertise them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeRange {
    pub min_width: u32,
    pub max_width: u32,
    pub step_width: u32,
    pub min_height: u32,
    pub max_height: u32,
    pub step_height: u32,
}

impl SizeRange {
    /// The size in the range nearest to `width` x `height`.
    pub fn nearest(&self, width: u32, height: u32) -> (u32, u32) {
        let fit = |wanted: u32, min: u32, max: u32, step: u32| {
            let steps = (wanted.clamp(min, max) - min + step.max(1) / 2) / step.max(1);
            (min + steps * step.max(1)).min(max)
        };
        (
            fit(width, self.min_width, self.max_width, self.step_width),
            fit(height, self.min_height, self.max_height, self.step_height),
        )
    }
}

/// Everything a device offers for one pixel format (its four-character code).
#[derive(Clone, Debug, PartialEq)]
pub struct FormatOffer {
    pub fourcc: [u8; 4],
    pub sizes: Vec<SizeOffer>,
}

/// A format, size and frame rate: what was chosen or what a source delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamFormat {
    pub format: PixelFormat,
    pub fourcc: [u8; 4],
    pub width: u32,
    pub height: u32,
    pub interval: Interval,
}

impl fmt::Display for StreamFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}x{} at {:.3} fps",
            fourcc_name(self.fourcc),
            self.width,
            self.height,
            self.interval.fps()
        )
    }
}

/// The pixel format fer-edge reads for a V4L2 four-character code, if any.
pub fn pixel_format(fourcc: [u8; 4]) -> Option<PixelFormat> {
    match &fourcc {
        b"MJPG" | b"JPEG" => Some(PixelFormat::Mjpeg),
        b"YUYV" => Some(PixelFormat::Yuyv),
        b"GREY" => Some(PixelFormat::Grey8),
        b"RGB3" => Some(PixelFormat::Rgb8),
        _ => None,
    }
}

/// A four-character code as text, e.g. `MJPG`.
pub fn fourcc_name(fourcc: [u8; 4]) -> String {
    String::from_utf8_lossy(&fourcc).trim_end().to_string()
}

/// Picks the format, size and frame rate to ask the device for; see the
/// module documentation for the rules. The error says what the device
/// offers instead.
pub fn choose(offers: &[FormatOffer], wanted: &CaptureConfig) -> Result<StreamFormat, String> {
    let candidates = wanted.format.candidates();
    let wanted_interval = Interval::from_fps(wanted.fps);
    let best = offers
        .iter()
        .filter_map(|offer| {
            let format = pixel_format(offer.fourcc)?;
            let preference = candidates.iter().position(|&c| c == format)?;
            Some((offer, format, preference))
        })
        .flat_map(|(offer, format, preference)| {
            offer.sizes.iter().map(move |size| {
                let interval = choose_interval(&size.intervals, wanted_interval);
                let choice = StreamFormat {
                    format,
                    fourcc: offer.fourcc,
                    width: size.width,
                    height: size.height,
                    interval,
                };
                let rank = Rank {
                    size: size_rank(size, wanted),
                    misses_fps: !reaches(interval, wanted.fps),
                    preference,
                    fps_distance: (interval.fps() - wanted.fps).abs(),
                };
                (rank, choice)
            })
        })
        .min_by(|(a, _), (b, _)| a.compare(b));
    best.map(|(_, choice)| choice).ok_or_else(|| {
        let wanted_names: Vec<_> = candidates.iter().map(|&f| format_name(f)).collect();
        let offered: Vec<_> = offers.iter().map(|o| fourcc_name(o.fourcc)).collect();
        format!(
            "offers no frame size in {} (it offers: {})",
            wanted_names.join(", "),
            if offered.is_empty() {
                "nothing".to_string()
            } else {
                offered.join(", ")
            }
        )
    })
}

/// How well a candidate fits, compared field by field; smaller is better.
#[derive(Debug)]
struct Rank {
    size: (u8, u64),
    misses_fps: bool,
    preference: usize,
    fps_distance: f64,
}

impl Rank {
    fn compare(&self, other: &Rank) -> std::cmp::Ordering {
        (self.size, self.misses_fps, self.preference)
            .cmp(&(other.size, other.misses_fps, other.preference))
            .then(self.fps_distance.total_cmp(&other.fps_distance))
    }
}

/// Exact size first, then sizes that cover the wanted one (smallest area
/// first), then smaller ones (largest area first).
fn size_rank(size: &SizeOffer, wanted: &CaptureConfig) -> (u8, u64) {
    let area = size.width as u64 * size.height as u64;
    if (size.width, size.height) == (wanted.width, wanted.height) {
        (0, 0)
    } else if size.width >= wanted.width && size.height >= wanted.height {
        (1, area)
    } else {
        (2, u64::MAX - area)
    }
}

fn choose_interval(offers: &[IntervalOffer], wanted: Interval) -> Interval {
    let wanted_fps = wanted.fps();
    let candidates = offers.iter().map(|offer| match *offer {
        IntervalOffer::Discrete(interval) => interval,
        IntervalOffer::Range { shortest, .. } if wanted_fps > shortest.fps() => shortest,
        IntervalOffer::Range { longest, .. } if wanted_fps < longest.fps() => longest,
        IntervalOffer::Range { .. } => wanted,
    });
    let by_fps = |a: &Interval, b: &Interval| a.fps().total_cmp(&b.fps());
    let slowest_fast_enough = candidates
        .clone()
        .filter(|interval| reaches(*interval, wanted_fps))
        .min_by(by_fps);
    // A driver that enumerates no intervals is asked for the wanted rate.
    slowest_fast_enough
        .or_else(|| candidates.max_by(by_fps))
        .unwrap_or(wanted)
}

/// True if `interval` gives at least `fps` frames a second, give or take
/// the rounding of intervals like 333333/10000000 s.
fn reaches(interval: Interval, fps: f64) -> bool {
    interval.fps() >= fps * 0.999
}

fn format_name(format: PixelFormat) -> &'static str {
    match format {
        PixelFormat::Mjpeg => "MJPG",
        PixelFormat::Yuyv => "YUYV",
        PixelFormat::Grey8 => "GREY",
        PixelFormat::Rgb8 => "RGB3",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::FormatPreference;

    #[test]
    fn intervals_from_fps_are_reduced_fractions() {
        assert_eq!(
            Interval::from_fps(15.0),
            Interval {
                numerator: 1,
                denominator: 15
            }
        );
        assert_eq!(
            Interval::from_fps(7.5),
            Interval {
                numerator: 2,
                denominator: 15
            }
        );
        assert!(
            (Interval {
                numerator: 333_333,
                denominator: 10_000_000
            }
            .fps()
                - 30.0)
                .abs()
                < 1e-3
        );
    }

    #[test]
    fn stepwise_sizes_snap_to_the_grid_and_clamp() {
        let range = SizeRange {
            min_width: 32,
            max_width: 2592,
            step_width: 2,
            min_height: 32,
            max_height: 1944,
            step_height: 2,
        };
        assert_eq!(range.nearest(640, 480), (640, 480));
        assert_eq!(range.nearest(641, 10), (642, 32));
        assert_eq!(range.nearest(5000, 5000), (2592, 1944));
    }

    #[test]
    fn continuous_interval_range_takes_the_wanted_rate_clamped() {
        let range = [IntervalOffer::Range {
            shortest: Interval {
                numerator: 1,
                denominator: 30,
            },
            longest: Interval {
                numerator: 1,
                denominator: 1,
            },
        }];
        assert_eq!(
            choose_interval(&range, Interval::from_fps(15.0)).fps(),
            15.0
        );
        assert_eq!(
            choose_interval(&range, Interval::from_fps(60.0)).fps(),
            30.0
        );
        assert_eq!(choose_interval(&range, Interval::from_fps(0.5)).fps(), 1.0);
        assert_eq!(choose_interval(&[], Interval::from_fps(12.0)).fps(), 12.0);
    }

    #[test]
    fn explicit_format_that_is_not_offered_names_what_is() {
        let offers = [FormatOffer {
            fourcc: *b"H264",
            sizes: vec![SizeOffer {
                width: 640,
                height: 480,
                intervals: vec![],
            }],
        }];
        let wanted = CaptureConfig {
            format: FormatPreference::Mjpeg,
            ..Default::default()
        };
        assert_eq!(
            choose(&offers, &wanted).unwrap_err(),
            "offers no frame size in MJPG (it offers: H264)"
        );
    }
}
