//! V4L2 cameras (USB UVC webcams, CSI cameras through their V4L2 driver):
//! open the device, negotiate a mode with [`super::negotiate`], and stream
//! through memory-mapped buffers.

use super::frame::raw_frame_len;
use super::negotiate::{
    self, fourcc_name, FormatOffer, IntervalOffer, SizeOffer, SizeRange, StreamFormat,
};
use super::{CaptureConfig, CaptureError, CapturedFrame, FrameSource, Interval};
use std::io::ErrorKind;
use std::path::PathBuf;
use v4l::buffer::{Flags as BufferFlags, Type};
use v4l::capability::Flags as CapabilityFlags;
use v4l::format::{Format, FourCC};
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::capture::Parameters;
use v4l::video::Capture as _;
use v4l::{Device, Fraction};

/// Driver buffers in flight: enough to keep the camera streaming while a
/// frame is copied out, few enough that the newest frame is never far away.
const BUFFER_COUNT: u32 = 4;

/// A streaming V4L2 camera.
pub(crate) struct V4l2Source {
    device_path: PathBuf,
    card: String,
    stream: Stream<'static>,
    format: StreamFormat,
    bytes_per_line: usize,
    frame_timeout_ms: u64,
    max_pixels: u64,
}

impl V4l2Source {
    /// Opens `config.device`, negotiates the mode closest to the config, and
    /// starts streaming. Every error names the device.
    pub(crate) fn open(config: &CaptureConfig) -> Result<Self, CaptureError> {
        let path = config.device.display();
        let unavailable = |what: &str, e: std::io::Error| {
            CaptureError::Unavailable(format!("camera {path}: {what}: {e}"))
        };
        let device = Device::with_path(&config.device)
            .map_err(|e| unavailable("cannot open the device", e))?;
        let capabilities = device
            .query_caps()
            .map_err(|e| unavailable("cannot query its capabilities", e))?;
        let card = capabilities.card;
        if !capabilities
            .capabilities
            .contains(CapabilityFlags::VIDEO_CAPTURE | CapabilityFlags::STREAMING)
        {
            return Err(CaptureError::Unavailable(format!(
                "camera {path} ({card}) is not a streaming video capture device \
                 (a USB camera's second /dev/video node carries only metadata)"
            )));
        }
        let offers = advertised_offers(&device, config)
            .map_err(|e| unavailable("cannot list its formats", e))?;
        let choice = negotiate::choose(&offers, config)
            .map_err(|e| CaptureError::Unavailable(format!("camera {path} ({card}) {e}")))?;

        let wanted = Format::new(choice.width, choice.height, FourCC::new(&choice.fourcc));
        let applied = device
            .set_format(&wanted)
            .map_err(|e| unavailable(&format!("cannot set {choice}"), e))?;
        let format = negotiate::pixel_format(applied.fourcc.repr).ok_or_else(|| {
            CaptureError::Unavailable(format!(
                "camera {path} ({card}) switched to format {} when asked for {}",
                fourcc_name(applied.fourcc.repr),
                fourcc_name(choice.fourcc)
            ))
        })?;
        let interval = apply_interval(&device, choice.interval, &path.to_string());
        let negotiated = StreamFormat {
            format,
            fourcc: applied.fourcc.repr,
            width: applied.width,
            height: applied.height,
            interval,
        };
        log::info!(
            "camera {path} ({card}): negotiated {negotiated} (config: {}x{} at {} fps, format {:?})",
            config.width,
            config.height,
            config.fps,
            config.format
        );

        let mut stream = Stream::with_buffers(&device, Type::VideoCapture, BUFFER_COUNT)
            .map_err(|e| unavailable("cannot map capture buffers", e))?;
        stream.set_timeout(std::time::Duration::from_millis(config.frame_timeout_ms));
        Ok(V4l2Source {
            device_path: config.device.clone(),
            card,
            stream,
            format: negotiated,
            bytes_per_line: applied.stride as usize,
            frame_timeout_ms: config.frame_timeout_ms,
            max_pixels: config.max_frame_pixels,
        })
    }
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self) -> Result<CapturedFrame, CaptureError> {
        let path = self.device_path.display();
        let (buffer, meta) = CaptureStream::next(&mut self.stream).map_err(|e| {
            CaptureError::Unavailable(if e.kind() == ErrorKind::TimedOut {
                format!(
                    "camera {path} sent no frame in {} ms",
                    self.frame_timeout_ms
                )
            } else {
                format!("camera {path} failed: {e}")
            })
        })?;
        let sequence = u64::from(meta.sequence);
        let corrupt = |reason: &str| {
            CaptureError::Corrupt(format!("camera {path} frame {sequence}: {reason}"))
        };
        if meta.flags.contains(BufferFlags::ERROR) {
            return Err(corrupt("the driver flagged it as damaged"));
        }
        let used = &buffer[..(meta.bytesused as usize).min(buffer.len())];
        let StreamFormat { format, .. } = self.format;
        let (width, height) = (self.format.width as usize, self.format.height as usize);
        let frame = match raw_frame_len(format, width, 1) {
            None => CapturedFrame::mjpeg(used.to_vec(), sequence, self.max_pixels),
            Some(row_len) => {
                let pixels = packed_rows(used, self.bytes_per_line, row_len, height);
                CapturedFrame::raw(format, width, height, pixels, sequence)
            }
        };
        frame.map_err(|reason| corrupt(&reason))
    }

    fn describe(&self) -> String {
        format!("camera {} ({})", self.device_path.display(), self.card)
    }

    fn stream_format(&self) -> Option<StreamFormat> {
        Some(self.format)
    }
}

/// Everything the device advertises, in the form [`negotiate::choose`]
/// takes. A size range is offered as its size nearest the wanted one; a
/// format whose sizes cannot be listed is offered at the wanted size (the
/// driver adjusts it when the format is set).
fn advertised_offers(device: &Device, config: &CaptureConfig) -> std::io::Result<Vec<FormatOffer>> {
    let mut offers = Vec::new();
    for description in device.enum_formats()? {
        let fourcc = description.fourcc;
        let mut sizes = Vec::new();
        if negotiate::pixel_format(fourcc.repr).is_some() {
            let listed = device.enum_framesizes(fourcc).unwrap_or_default();
            let mut dimensions: Vec<(u32, u32)> = listed
                .into_iter()
                .map(|size| match size.size {
                    FrameSizeEnum::Discrete(d) => (d.width, d.height),
                    FrameSizeEnum::Stepwise(s) => SizeRange {
                        min_width: s.min_width,
                        max_width: s.max_width,
                        step_width: s.step_width,
                        min_height: s.min_height,
                        max_height: s.max_height,
                        step_height: s.step_height,
                    }
                    .nearest(config.width, config.height),
                })
                .collect();
            if dimensions.is_empty() {
                dimensions.push((config.width, config.height));
            }
            sizes = dimensions
                .into_iter()
                .map(|(width, height)| SizeOffer {
                    width,
                    height,
                    intervals: advertised_intervals(device, fourcc, width, height),
                })
                .collect();
        }
        offers.push(FormatOffer {
            fourcc: fourcc.repr,
            sizes,
        });
    }
    Ok(offers)
}

/// The frame intervals the device advertises for one format and size
/// (none when the driver does not enumerate them).
fn advertised_intervals(
    device: &Device,
    fourcc: FourCC,
    width: u32,
    height: u32,
) -> Vec<IntervalOffer> {
    let interval = |f: Fraction| Interval {
        numerator: f.numerator,
        denominator: f.denominator,
    };
    device
        .enum_frameintervals(fourcc, width, height)
        .unwrap_or_default()
        .into_iter()
        .map(|listed| match listed.interval {
            FrameIntervalEnum::Discrete(f) => IntervalOffer::Discrete(interval(f)),
            FrameIntervalEnum::Stepwise(s) => IntervalOffer::Range {
                shortest: interval(s.min),
                longest: interval(s.max),
            },
        })
        .collect()
}

/// Asks for `wanted` and returns the interval the driver settled on. A
/// driver without frame-rate control keeps its own (logged).
fn apply_interval(device: &Device, wanted: Interval, path: &str) -> Interval {
    let requested = Parameters::new(Fraction::new(wanted.numerator, wanted.denominator));
    let settled = device.set_params(&requested).or_else(|e| {
        log::warn!("camera {path}: cannot set the frame rate ({e}); keeping the driver's");
        device.params()
    });
    match settled {
        Ok(params) if params.interval.numerator > 0 => Interval {
            numerator: params.interval.numerator,
            denominator: params.interval.denominator,
        },
        _ => wanted,
    }
}

/// The pixel rows of a raw frame without the padding a driver may put at
/// the end of each row (`stride` > `row_len`) and of the buffer. A buffer
/// too short for the frame is returned whole, for the byte-count check.
fn packed_rows(used: &[u8], stride: usize, row_len: usize, height: usize) -> Vec<u8> {
    let stride = stride.max(row_len);
    let needed = stride * height.saturating_sub(1) + row_len;
    if height == 0 || used.len() < needed {
        return used.to_vec();
    }
    if stride == row_len {
        return used[..row_len * height].to_vec();
    }
    used.chunks(stride)
        .take(height)
        .flat_map(|row| &row[..row_len])
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_padding_and_buffer_padding_are_removed() {
        // 2 rows of 4 bytes with a stride of 6, then 3 bytes of buffer padding.
        let used = [1, 2, 3, 4, 0, 0, 5, 6, 7, 8, 0, 0, 9, 9, 9];
        assert_eq!(packed_rows(&used, 6, 4, 2), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(packed_rows(&used[..8], 4, 4, 2), used[..8]);
        assert_eq!(packed_rows(&used[..12], 0, 4, 2), used[..8]);
        // Too short for two rows: left whole, so the byte count check rejects it.
        assert_eq!(packed_rows(&used[..9], 6, 4, 2), used[..9]);
    }
}
