//! The capture stage: camera-mode negotiation over what real cameras
//! advertise, the file sources decoding to known pixels, corrupt MJPEG
//! frames skipped and counted, reconnection with capped backoff, and the
//! latest-frame mailbox under a slow consumer.
//!
//! NOT COVERED here (no camera on the build machine): streaming from a real
//! V4L2 device. `streams_from_a_real_camera` does it where a camera is
//! plugged in: `cargo test --release --test capture -- --ignored`
//! (device from `FER_EDGE_TEST_CAMERA`, default `/dev/video0`).

mod common;

use common::repo;
use fer_edge::capture::negotiate::{choose, FormatOffer, IntervalOffer, SizeOffer, SizeRange};
use fer_edge::capture::{
    open, Capture, CaptureConfig, CaptureError, CapturedFrame, FormatPreference, FrameSource,
    Interval, PixelFormat, ReconnectConfig, SourceKind,
};
use fer_edge::preprocess::{grey_to_rgb, mjpeg_to_rgb, yuyv_to_rgb};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- helpers

/// A fresh, empty scratch directory for one test.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("capture")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A file source config reading `path` as fast as possible, once.
fn file_config(source: SourceKind, path: &Path) -> CaptureConfig {
    CaptureConfig {
        source,
        path: Some(path.to_path_buf()),
        fps: 0.0,
        ..Default::default()
    }
}

/// Reads a source to its end, at its pace (as the capture thread does):
/// the frames, and the corrupt-frame errors.
fn read_all(source: &mut dyn FrameSource) -> (Vec<CapturedFrame>, Vec<String>) {
    let (mut frames, mut corrupt) = (Vec::new(), Vec::new());
    loop {
        if let Some(due) = source.next_due() {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        match source.next_frame() {
            Ok(frame) => frames.push(frame),
            Err(CaptureError::Corrupt(reason)) => corrupt.push(reason),
            Err(CaptureError::EndOfStream) => return (frames, corrupt),
            Err(other) => panic!("unexpected error from {}: {other}", source.describe()),
        }
    }
}

/// A baseline JPEG of one colour, as a camera's MJPEG frame would be.
fn solid_jpeg(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let pixels: Vec<u8> = (0..width * height).flat_map(|_| rgb).collect();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
        .encode(&pixels, width, height, image::ExtendedColorType::Rgb8)
        .unwrap();
    jpeg
}

fn assert_all_pixels_near(rgb: &[u8], expected: [u8; 3], tolerance: i32, what: &str) {
    for (i, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            assert!(
                (px[c] as i32 - expected[c] as i32).abs() <= tolerance,
                "{what}: pixel {i} is {px:?}, expected {expected:?}"
            );
        }
    }
}

// ------------------------------------------------------------ negotiation

fn discrete(fps: &[u32]) -> Vec<IntervalOffer> {
    fps.iter()
        .map(|&f| {
            IntervalOffer::Discrete(Interval {
                numerator: 1,
                denominator: f,
            })
        })
        .collect()
}

fn sizes(list: &[(u32, u32, &[u32])]) -> Vec<SizeOffer> {
    list.iter()
        .map(|&(width, height, fps)| SizeOffer {
            width,
            height,
            intervals: discrete(fps),
        })
        .collect()
}

/// What a Logitech C920 advertises (`v4l2-ctl --list-formats-ext`, trimmed):
/// YUYV is bandwidth-limited above 640x480, MJPG reaches 30 fps everywhere.
fn logitech_c920() -> Vec<FormatOffer> {
    let all = &[30, 24, 20, 15, 10, 5][..];
    vec![
        FormatOffer {
            fourcc: *b"YUYV",
            sizes: sizes(&[
                (640, 480, all),
                (160, 90, all),
                (320, 240, all),
                (800, 600, &[24, 20, 15, 10, 5]),
                (1280, 720, &[10, 5]),
                (1920, 1080, &[5]),
            ]),
        },
        FormatOffer {
            fourcc: *b"H264",
            sizes: sizes(&[(640, 480, all), (1920, 1080, all)]),
        },
        FormatOffer {
            fourcc: *b"MJPG",
            sizes: sizes(&[
                (640, 480, all),
                (160, 90, all),
                (320, 240, all),
                (800, 600, all),
                (1280, 720, all),
                (1920, 1080, all),
            ]),
        },
    ]
}

#[test]
fn c920_gives_mjpeg_at_the_wanted_size_and_rate() {
    let chosen = choose(&logitech_c920(), &CaptureConfig::default()).unwrap();
    assert_eq!(chosen.format, PixelFormat::Mjpeg);
    assert_eq!(&chosen.fourcc, b"MJPG");
    assert_eq!((chosen.width, chosen.height), (640, 480));
    assert_eq!(
        chosen.interval,
        Interval {
            numerator: 1,
            denominator: 15
        }
    );
    assert_eq!(chosen.to_string(), "MJPG 640x480 at 15.000 fps");
}

#[test]
fn c920_forced_to_yuyv_at_720p_takes_its_best_rate() {
    let wanted = CaptureConfig {
        format: FormatPreference::Yuyv,
        width: 1280,
        height: 720,
        fps: 30.0,
        ..Default::default()
    };
    let chosen = choose(&logitech_c920(), &wanted).unwrap();
    assert_eq!(
        (chosen.format, chosen.width, chosen.height),
        (PixelFormat::Yuyv, 1280, 720)
    );
    assert_eq!(chosen.interval.fps(), 10.0);
}

#[test]
fn unlisted_size_takes_the_smallest_that_covers_it() {
    let wanted = CaptureConfig {
        width: 700,
        height: 500,
        ..Default::default()
    };
    let chosen = choose(&logitech_c920(), &wanted).unwrap();
    assert_eq!(
        (chosen.format, chosen.width, chosen.height),
        (PixelFormat::Mjpeg, 800, 600)
    );
    // Larger than anything offered: the largest.
    let wanted = CaptureConfig {
        width: 4096,
        height: 2160,
        ..Default::default()
    };
    let chosen = choose(&logitech_c920(), &wanted).unwrap();
    assert_eq!((chosen.width, chosen.height), (1920, 1080));
}

#[test]
fn cheap_yuyv_only_webcam_falls_back_to_yuyv() {
    let offers = vec![FormatOffer {
        fourcc: *b"YUYV",
        sizes: sizes(&[
            (640, 480, &[30, 15]),
            (352, 288, &[30, 15]),
            (320, 240, &[30, 15]),
        ]),
    }];
    let chosen = choose(&offers, &CaptureConfig::default()).unwrap();
    assert_eq!(
        (chosen.format, chosen.width, chosen.height),
        (PixelFormat::Yuyv, 640, 480)
    );
    assert_eq!(chosen.interval.fps(), 15.0);
}

#[test]
fn greyscale_ir_camera_gives_grey_at_its_nearest_size() {
    // A 640x400 global-shutter IR module (OV9281-style), GREY only.
    let offers = vec![FormatOffer {
        fourcc: *b"GREY",
        sizes: sizes(&[(1280, 800, &[60, 30]), (640, 400, &[120, 60, 30])]),
    }];
    let wanted = CaptureConfig {
        fps: 30.0,
        ..Default::default()
    };
    let chosen = choose(&offers, &wanted).unwrap();
    // 1280x800 is the only size covering 640x480.
    assert_eq!(
        (chosen.format, chosen.width, chosen.height),
        (PixelFormat::Grey8, 1280, 800)
    );
    assert_eq!(chosen.interval.fps(), 30.0);
    let wanted = CaptureConfig {
        width: 640,
        height: 400,
        format: FormatPreference::Grey,
        ..wanted
    };
    let chosen = choose(&offers, &wanted).unwrap();
    assert_eq!((chosen.width, chosen.height), (640, 400));
}

#[test]
fn pi_camera_stepwise_sizes_and_continuous_rates() {
    // The Raspberry Pi camera through bcm2835-v4l2: every format with a
    // stepwise size range and a continuous frame rate range. The V4L2 source
    // turns each range into its size nearest the wanted one.
    let range = SizeRange {
        min_width: 32,
        max_width: 2592,
        step_width: 2,
        min_height: 32,
        max_height: 1944,
        step_height: 2,
    };
    let wanted = CaptureConfig {
        width: 641,
        height: 481,
        fps: 20.0,
        ..Default::default()
    };
    let (width, height) = range.nearest(wanted.width, wanted.height);
    let rates = vec![IntervalOffer::Range {
        shortest: Interval {
            numerator: 1,
            denominator: 90,
        },
        longest: Interval {
            numerator: 1,
            denominator: 1,
        },
    }];
    let offers: Vec<FormatOffer> = [b"YU12", b"YUYV", b"RGB3", b"JPEG", b"H264", b"NV12"]
        .into_iter()
        .map(|fourcc| FormatOffer {
            fourcc: *fourcc,
            sizes: vec![SizeOffer {
                width,
                height,
                intervals: rates.clone(),
            }],
        })
        .collect();
    let chosen = choose(&offers, &wanted).unwrap();
    assert_eq!(
        (&chosen.fourcc, chosen.format),
        (b"JPEG", PixelFormat::Mjpeg)
    );
    assert_eq!((chosen.width, chosen.height), (642, 482));
    assert_eq!(chosen.interval.fps(), 20.0);
    let rgb = CaptureConfig {
        format: FormatPreference::Rgb,
        ..wanted
    };
    assert_eq!(choose(&offers, &rgb).unwrap().format, PixelFormat::Rgb8);
}

#[test]
fn reaching_the_frame_rate_beats_the_format_preference() {
    // MJPEG only at 5 fps at this size, YUYV at 30: YUYV meets 15 fps.
    let offers = vec![
        FormatOffer {
            fourcc: *b"MJPG",
            sizes: sizes(&[(640, 480, &[5])]),
        },
        FormatOffer {
            fourcc: *b"YUYV",
            sizes: sizes(&[(640, 480, &[30, 15])]),
        },
    ];
    let chosen = choose(&offers, &CaptureConfig::default()).unwrap();
    assert_eq!(
        (chosen.format, chosen.interval.fps()),
        (PixelFormat::Yuyv, 15.0)
    );
}

#[test]
fn camera_with_no_readable_format_names_what_it_has() {
    let offers = vec![
        FormatOffer {
            fourcc: *b"H264",
            sizes: sizes(&[(1920, 1080, &[30])]),
        },
        FormatOffer {
            fourcc: *b"NV12",
            sizes: sizes(&[(640, 480, &[30])]),
        },
    ];
    let err = choose(&offers, &CaptureConfig::default()).unwrap_err();
    assert_eq!(
        err,
        "offers no frame size in MJPG, YUYV, GREY, RGB3 (it offers: H264, NV12)"
    );
}

// ----------------------------------------------------------- file sources

/// BT.601 limited-range YUV of the 75% colour bars and their RGB.
const BARS: [([u8; 3], [u8; 3]); 7] = [
    ([180, 128, 128], [191, 191, 191]),
    ([162, 44, 142], [191, 191, 0]),
    ([131, 156, 44], [0, 191, 191]),
    ([112, 72, 58], [0, 191, 0]),
    ([84, 184, 198], [191, 0, 191]),
    ([65, 100, 212], [191, 0, 0]),
    ([35, 212, 114], [0, 0, 191]),
];

#[test]
fn yuyv_dump_frames_decode_to_the_colour_bars() {
    // Two 14x2 frames: the bars left to right, then right to left.
    let (width, height) = (14, 2);
    let frame_bytes = |order: &[usize]| -> Vec<u8> {
        let row: Vec<u8> = order
            .iter()
            .flat_map(|&i| {
                let [y, u, v] = BARS[i].0;
                [y, u, y, v]
            })
            .collect();
        row.repeat(height)
    };
    let forward: Vec<usize> = (0..7).collect();
    let backward: Vec<usize> = (0..7).rev().collect();
    let dir = scratch_dir("yuyv");
    let path = dir.join("bars.yuyv");
    std::fs::write(
        &path,
        [frame_bytes(&forward), frame_bytes(&backward)].concat(),
    )
    .unwrap();

    let config = CaptureConfig {
        width: width as u32,
        height: height as u32,
        ..file_config(SourceKind::RawFile, &path)
    };
    let mut source = open(&config).unwrap();
    assert!(
        source.describe().contains("bars.yuyv"),
        "{}",
        source.describe()
    );
    let (frames, corrupt) = read_all(source.as_mut());
    assert!(corrupt.is_empty(), "{corrupt:?}");
    assert_eq!(frames.len(), 2);
    for (frame, order) in frames.iter().zip([&forward, &backward]) {
        assert_eq!(
            (frame.format, frame.width, frame.height),
            (PixelFormat::Yuyv, width, height)
        );
        let mut rgb = Vec::new();
        yuyv_to_rgb(&frame.data, frame.width, frame.height, &mut rgb).unwrap();
        for (x, px) in rgb.chunks_exact(3).take(width).enumerate() {
            let expected = BARS[order[x / 2]].1;
            assert_all_pixels_near(px, expected, 2, &format!("frame {} x {x}", frame.sequence));
        }
    }
    assert_eq!([frames[0].sequence, frames[1].sequence], [0, 1]);
}

#[test]
fn grey_dump_with_a_short_last_frame_reports_it() {
    let dir = scratch_dir("grey");
    let path = dir.join("ramp.grey");
    let ramp: Vec<u8> = (0..12).map(|i| i * 20).collect();
    std::fs::write(&path, [&ramp[..], &ramp[..], &ramp[..5]].concat()).unwrap();
    let config = CaptureConfig {
        width: 4,
        height: 3,
        format: FormatPreference::Grey,
        ..file_config(SourceKind::RawFile, &path)
    };
    let (frames, corrupt) = read_all(open(&config).unwrap().as_mut());
    assert_eq!(frames.len(), 2);
    let mut rgb = Vec::new();
    grey_to_rgb(&frames[1].data, 4, 3, &mut rgb).unwrap();
    let expected: Vec<u8> = ramp.iter().flat_map(|&g| [g, g, g]).collect();
    assert_eq!(rgb, expected);
    assert_eq!(corrupt.len(), 1);
    assert!(
        corrupt[0].contains("ramp.grey frame 2") && corrupt[0].contains("5 bytes, expected 12"),
        "{}",
        corrupt[0]
    );
}

#[test]
fn mjpeg_stream_frames_decode_to_known_pixels() {
    let red = [220, 30, 40];
    let blue = [20, 40, 200];
    let obama = std::fs::read(repo("samples/obama.jpg")).unwrap();
    let frames_in = [
        solid_jpeg(16, 8, red),
        obama.clone(),
        solid_jpeg(8, 8, blue),
    ];
    let dir = scratch_dir("mjpeg");
    let path = dir.join("three.mjpeg");
    std::fs::write(&path, frames_in.concat()).unwrap();

    let (frames, corrupt) = read_all(
        open(&file_config(SourceKind::MjpegFile, &path))
            .unwrap()
            .as_mut(),
    );
    assert!(corrupt.is_empty(), "{corrupt:?}");
    assert_eq!(frames.len(), 3);
    for (frame, original) in frames.iter().zip(&frames_in) {
        assert_eq!(frame.format, PixelFormat::Mjpeg);
        assert_eq!(
            &frame.data, original,
            "frame {} is not split at its markers",
            frame.sequence
        );
    }
    assert_eq!(
        frames
            .iter()
            .map(|f| (f.width, f.height))
            .collect::<Vec<_>>(),
        [(16, 8), (512, 640), (8, 8)]
    );
    let mut rgb = Vec::new();
    assert_eq!(
        mjpeg_to_rgb(&frames[0].data, None, &mut rgb).unwrap(),
        (16, 8)
    );
    assert_all_pixels_near(&rgb, red, 4, "red frame");
    assert_eq!(
        mjpeg_to_rgb(&frames[2].data, None, &mut rgb).unwrap(),
        (8, 8)
    );
    assert_all_pixels_near(&rgb, blue, 4, "blue frame");
    assert_eq!(
        mjpeg_to_rgb(&frames[1].data, None, &mut rgb).unwrap(),
        (512, 640)
    );
}

#[test]
fn corrupt_mjpeg_frames_are_skipped_and_counted() {
    let good = [
        solid_jpeg(8, 8, [255, 0, 0]),
        solid_jpeg(8, 8, [0, 255, 0]),
        solid_jpeg(8, 8, [0, 0, 255]),
    ];
    // A real photo, so the cuts fall in its entropy-coded data, as they
    // do in camera frames (headers are a few hundred bytes of ~50 kB).
    let cut = std::fs::read(repo("samples/biden.jpg")).unwrap();
    let mut stream = good[0].clone();
    stream.extend_from_slice(&[0; 16]); // zero padding: not corrupt
    stream.extend_from_slice(&cut[..cut.len() / 2]); // a USB hiccup: frame cut short
    stream.extend_from_slice(&good[1]);
    stream.extend_from_slice(b"not a jpeg at all"); // stray bytes
    stream.extend_from_slice(&good[2]);
    stream.extend_from_slice(&cut[..cut.len() - 10]); // the stream ends mid-frame
    let dir = scratch_dir("corrupt_mjpeg");
    let path = dir.join("damaged.mjpeg");
    std::fs::write(&path, &stream).unwrap();
    let config = file_config(SourceKind::MjpegFile, &path);

    let (frames, corrupt) = read_all(open(&config).unwrap().as_mut());
    assert_eq!(
        frames.iter().map(|f| &f.data).collect::<Vec<_>>(),
        good.iter().collect::<Vec<_>>()
    );
    assert_eq!(corrupt.len(), 3, "{corrupt:#?}");
    let second_start = good[0].len() + 16;
    assert!(
        corrupt[0].contains(&format!(
            "damaged.mjpeg: frame 1 at byte {second_start}: cut short"
        )),
        "{}",
        corrupt[0]
    );
    assert!(
        corrupt[1].contains("17 bytes that are not JPEG"),
        "{}",
        corrupt[1]
    );
    assert!(
        corrupt[2].contains("truncated: the stream ends"),
        "{}",
        corrupt[2]
    );
    // Corrupt frames keep their place in the numbering.
    assert_eq!(
        frames.iter().map(|f| f.sequence).collect::<Vec<_>>(),
        [0, 2, 4]
    );

    // The capture service skips them and counts them.
    let capture = Capture::start(&config).unwrap();
    wait_until(|| capture.is_finished(), "the capture to finish");
    let stats = capture.stats();
    assert_eq!((stats.frames, stats.corrupt, stats.reconnects), (3, 3, 0));
}

#[test]
fn image_directory_in_name_order_with_png_and_repeat() {
    let dir = scratch_dir("images");
    std::fs::write(dir.join("a.jpg"), solid_jpeg(8, 8, [200, 100, 50])).unwrap();
    let png_pixels = [
        255u8, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30, 40, 50, 60, 70, 80, 90,
    ];
    image::RgbImage::from_raw(3, 2, png_pixels.to_vec())
        .unwrap()
        .save(dir.join("b.PNG"))
        .unwrap();
    std::fs::write(dir.join("c.jpeg"), b"\xFF\xD8\xFF broken").unwrap();
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();

    let config = file_config(SourceKind::ImageDir, &dir);
    let mut source = open(&config).unwrap();
    assert!(
        source.describe().ends_with("(3 images)"),
        "{}",
        source.describe()
    );
    let (frames, corrupt) = read_all(source.as_mut());
    assert_eq!(frames.len(), 2);
    assert_eq!((frames[0].format, frames[0].width), (PixelFormat::Mjpeg, 8));
    assert_eq!(
        (frames[1].format, frames[1].width, frames[1].height),
        (PixelFormat::Rgb8, 3, 2)
    );
    assert_eq!(frames[1].data, png_pixels);
    assert_eq!(corrupt.len(), 1);
    assert!(
        corrupt[0].contains("c.jpeg") && corrupt[0].contains("no end-of-image"),
        "{}",
        corrupt[0]
    );

    let mut looping = open(&CaptureConfig {
        repeat: true,
        ..config
    })
    .unwrap();
    let formats: Vec<_> = (0..6)
        .map(|_| {
            looping
                .next_frame()
                .map(|f| (f.sequence, f.format))
                .map_err(|e| e.to_string())
        })
        .collect();
    assert!(matches!(formats[2], Err(ref e) if e.contains("c.jpeg")));
    assert_eq!(formats[3], Ok((3, PixelFormat::Mjpeg)), "{formats:?}");
    assert_eq!(formats[4], Ok((4, PixelFormat::Rgb8)));
}

#[test]
fn paced_replay_keeps_the_frame_rate() {
    let dir = scratch_dir("paced");
    let path = dir.join("frames.grey");
    std::fs::write(&path, vec![7u8; 4 * 5]).unwrap();
    let config = CaptureConfig {
        width: 2,
        height: 2,
        fps: 50.0,
        format: FormatPreference::Grey,
        ..file_config(SourceKind::RawFile, &path)
    };
    let start = Instant::now();
    let (frames, _) = read_all(open(&config).unwrap().as_mut());
    assert_eq!(frames.len(), 5);
    // Five frames at 50 fps: the last comes 80 ms after the first.
    assert!(
        start.elapsed() >= Duration::from_millis(80),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn missing_files_and_bad_configs_name_the_problem() {
    let missing = Path::new("/nonexistent/clip.mjpeg");
    let err = open(&file_config(SourceKind::MjpegFile, missing))
        .err()
        .unwrap();
    assert!(matches!(err, CaptureError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("cannot open MJPEG file /nonexistent/clip.mjpeg"),
        "{err}"
    );
    let empty = scratch_dir("empty_dir");
    let err = open(&file_config(SourceKind::ImageDir, &empty))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("holds no .jpg, .jpeg or .png"),
        "{err}"
    );
    let mjpeg_raw = CaptureConfig {
        format: FormatPreference::Mjpeg,
        ..file_config(SourceKind::RawFile, missing)
    };
    let err = Capture::start(&mjpeg_raw).err().unwrap();
    assert!(matches!(err, CaptureError::Config(_)), "{err:?}");
}

// ------------------------------------------------------------- the camera

#[test]
fn missing_camera_is_a_clear_error_and_the_service_keeps_retrying() {
    common::skip(
        "streams_from_a_real_camera (V4L2 streaming, format setting, driver quirks) needs a camera; \
         run `cargo test --release --test capture -- --ignored` on a device with one",
    );
    let config = CaptureConfig {
        device: "/dev/video99".into(),
        ..Default::default()
    };
    let err = open(&config).err().unwrap();
    assert!(matches!(err, CaptureError::Unavailable(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("camera /dev/video99: cannot open the device"),
        "{err}"
    );

    let mut capture = Capture::start(&CaptureConfig {
        reconnect: ReconnectConfig {
            initial_delay_ms: 5,
            max_delay_ms: 10,
        },
        ..config
    })
    .unwrap();
    assert!(capture.latest(Duration::from_millis(100)).is_none());
    assert!(
        !capture.is_finished(),
        "a missing camera must not end the capture"
    );
    capture.stop();
}

#[test]
#[ignore = "needs a V4L2 camera (FER_EDGE_TEST_CAMERA, default /dev/video0)"]
fn streams_from_a_real_camera() {
    let device = std::env::var("FER_EDGE_TEST_CAMERA").unwrap_or_else(|_| "/dev/video0".into());
    let config = CaptureConfig {
        device: device.into(),
        ..Default::default()
    };
    let capture = Capture::start(&config).unwrap();
    let mut preprocessor = fer_edge::preprocess::Preprocessor::new(320, 320);
    for _ in 0..10 {
        let frame = capture
            .latest(Duration::from_secs(5))
            .expect("a frame within 5 s");
        preprocessor.run(&frame.frame()).unwrap();
    }
    let format = capture.stream_format().expect("a negotiated format");
    eprintln!("negotiated {format}; {:?}", capture.stats());
}

// ------------------------------------------------ the service: reconnects

/// Log lines, kept for tests to read.
struct LogRecorder(Mutex<Vec<String>>);

impl log::Log for LogRecorder {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

fn logged_lines() -> &'static LogRecorder {
    static RECORDER: OnceLock<&'static LogRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static LogRecorder =
            Box::leak(Box::new(LogRecorder(Mutex::new(Vec::new()))));
        log::set_logger(recorder).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
        recorder
    })
}

fn wait_until(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A camera stand-in: `frames` frames numbered from `first`, one per
/// `period`, then it is "unplugged" (or goes on for ever if `frames` is None).
struct FakeCamera {
    next: u64,
    end: Option<u64>,
    period: Duration,
}

impl FakeCamera {
    fn boxed(first: u64, frames: Option<u64>, period: Duration) -> Box<dyn FrameSource> {
        Box::new(FakeCamera {
            next: first,
            end: frames.map(|n| first + n),
            period,
        })
    }
}

impl FrameSource for FakeCamera {
    fn next_frame(&mut self) -> Result<CapturedFrame, CaptureError> {
        if Some(self.next) == self.end {
            return Err(CaptureError::Unavailable("fake camera unplugged".into()));
        }
        std::thread::sleep(self.period);
        self.next += 1;
        Ok(CapturedFrame::raw(PixelFormat::Grey8, 2, 1, vec![1, 2], self.next - 1).unwrap())
    }

    fn describe(&self) -> String {
        "fake camera".into()
    }
}

#[test]
fn unplugged_camera_is_retried_with_capped_backoff_and_frames_resume() {
    let log = logged_lines();
    // The opener fails 5 times, opens a camera that gives 3 frames and is
    // unplugged, fails 3 more times, then opens a camera that keeps going.
    let attempts = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let opener = {
        let attempts = attempts.clone();
        move || {
            let mut attempts = attempts.lock().unwrap();
            attempts.push(Instant::now());
            let period = Duration::from_millis(1);
            match attempts.len() {
                6 => Ok(FakeCamera::boxed(100, Some(3), period)),
                10 => Ok(FakeCamera::boxed(200, None, period)),
                n => Err(CaptureError::Unavailable(format!(
                    "no camera at /dev/reconnect-test (attempt {n})"
                ))),
            }
        }
    };
    let reconnect = ReconnectConfig {
        initial_delay_ms: 10,
        max_delay_ms: 40,
    };
    let mut capture = Capture::with_opener(opener, &reconnect).unwrap();

    let mut first_camera = Vec::new();
    loop {
        let frame = capture
            .latest(Duration::from_secs(30))
            .expect("the service to go on");
        if frame.sequence >= 200 {
            break;
        }
        first_camera.push(frame.sequence);
    }
    assert!(
        first_camera.iter().all(|s| (100..103).contains(s)),
        "{first_camera:?}"
    );
    let stats = capture.stats();
    assert_eq!(stats.reconnects, 2, "{stats:?}");
    assert!(!capture.is_finished());
    assert!(capture.is_open(), "the third camera delivers");
    capture.stop();
    assert!(!capture.is_open(), "a stopped capture has no source open");

    // The delays the service chose, from its log: doubling, capped at 40 ms,
    // back to 10 ms after the camera had delivered frames.
    let failures: Vec<String> = log
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|line| {
            line.contains("/dev/reconnect-test") || line.contains("fake camera unplugged")
        })
        .cloned()
        .collect();
    let retries: Vec<&str> = failures
        .iter()
        .map(|line| line.rsplit("retrying in ").next().unwrap())
        .collect();
    assert_eq!(
        retries,
        ["10ms", "20ms", "40ms", "40ms", "40ms", "10ms", "20ms", "40ms", "40ms"]
    );
    // A warning for the first failure of each outage; the retries at debug.
    let warnings: Vec<usize> = (0..failures.len())
        .filter(|&i| failures[i].starts_with("WARN"))
        .collect();
    assert_eq!(warnings, [0, 5], "{failures:#?}");
    // And it waited that long between attempts.
    let attempts = attempts.lock().unwrap();
    let waits = [10, 20, 40, 40, 40];
    for (i, wait) in waits.into_iter().enumerate() {
        let gap = attempts[i + 1] - attempts[i];
        assert!(
            gap >= Duration::from_millis(wait),
            "attempt {}: waited {gap:?}, not {wait} ms",
            i + 1
        );
    }
}

// ------------------------------------------------- the service: mailbox

#[test]
fn slow_consumer_gets_the_newest_frames_and_stale_ones_are_counted() {
    let opener = || Ok(FakeCamera::boxed(0, None, Duration::from_micros(500)));
    let mut capture = Capture::with_opener(opener, &ReconnectConfig::default()).unwrap();
    let mut taken = Vec::new();
    for _ in 0..10 {
        let frame = capture.latest(Duration::from_secs(30)).unwrap();
        taken.push(frame.sequence);
        std::thread::sleep(Duration::from_millis(15)); // inference takes a while
    }
    capture.stop();
    let stats = capture.stats();
    let leftover = capture.latest(Duration::ZERO).into_iter().count() as u64;
    assert!(taken.windows(2).all(|w| w[0] < w[1]), "{taken:?}");
    assert!(
        taken.windows(2).any(|w| w[1] - w[0] > 1),
        "no frame was skipped: {taken:?}"
    );
    assert!(stats.dropped > 0, "{stats:?}");
    assert_eq!(stats.reconnects, 0, "{stats:?}");
    assert_eq!(
        stats.frames,
        taken.len() as u64 + stats.dropped + leftover,
        "{stats:?}"
    );
}

// ------------------------------------------------- the service: watchdog

/// Gives one frame, then hangs in the "driver" for `hang`.
struct HangingCamera {
    delivered: bool,
    hang: Duration,
}

impl FrameSource for HangingCamera {
    fn next_frame(&mut self) -> Result<CapturedFrame, CaptureError> {
        if self.delivered {
            std::thread::sleep(self.hang);
            return Err(CaptureError::Unavailable("hanging camera gave up".into()));
        }
        self.delivered = true;
        Ok(CapturedFrame::raw(PixelFormat::Grey8, 2, 1, vec![1, 2], 0).unwrap())
    }

    fn describe(&self) -> String {
        "hanging camera".into()
    }
}

#[test]
fn the_watchdog_sees_a_hung_camera_but_not_an_unplugged_one() {
    let tolerance = Duration::from_millis(150);

    // Unplugged: every open fails, with 300-600 ms between attempts; the
    // capture thread is waiting, not stuck, the whole time.
    let reconnect = ReconnectConfig {
        initial_delay_ms: 300,
        max_delay_ms: 600,
    };
    let opener = || {
        Err(CaptureError::Unavailable(
            "no camera at /dev/watchdog-test".into(),
        ))
    };
    let mut unplugged = Capture::with_opener(opener, &reconnect).unwrap();
    wait_until(|| unplugged.is_alive(tolerance), "the first open attempt");
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        assert!(unplugged.is_alive(tolerance), "at {:?}", start.elapsed());
        assert!(!unplugged.is_open(), "no camera is open");
        std::thread::sleep(Duration::from_millis(20));
    }
    unplugged.stop();
    assert!(
        !unplugged.is_alive(tolerance),
        "a stopped capture is not alive"
    );

    // Hung: a frame, then a driver call that does not return for 1.5 s.
    let hang = Duration::from_millis(1500);
    let opener = move || {
        Ok(Box::new(HangingCamera {
            delivered: false,
            hang,
        }) as Box<dyn FrameSource>)
    };
    let mut hung = Capture::with_opener(opener, &ReconnectConfig::default()).unwrap();
    hung.latest(Duration::from_secs(30)).expect("the one frame");
    assert!(hung.is_open(), "the camera opened and delivered");
    std::thread::sleep(tolerance + Duration::from_millis(300));
    assert!(
        !hung.is_alive(tolerance),
        "a hung driver call must stop the pets"
    );
    hung.stop();
}
