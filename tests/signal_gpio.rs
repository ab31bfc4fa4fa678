//! The GPIO sink on the recording backend: which pins change, when, at
//! which level, for a sequence of track events and clock ticks, and for the
//! recorded frame sequence `samples/sequence` run through the detector and
//! tracker; the hold time; active-low inversion; safe pins on shutdown and
//! on drop.

mod common;

use common::{emulated, repo};
use fer_edge::decode::DecodeOptions;
use fer_edge::detector::Detector;
use fer_edge::face::{Expression, ExpressionScores};
use fer_edge::infer::Model;
use fer_edge::preprocess::{Frame, PixelFormat};
use fer_edge::signal::gpio::recording::{PinChange, RecordingPins};
use fer_edge::signal::gpio::{open_pins, GpioBackend, GpioConfig, Level, PinSignal};
use fer_edge::signal::{GpioSink, Sink};
use fer_edge::track::{EventKind, TrackEvent, Tracker, TrackerConfig};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const FACE_PRESENT: u32 = 17;
const HAPPINESS: u32 = 27;
const SURPRISE: u32 = 22;

fn config(active_low: bool) -> GpioConfig {
    GpioConfig {
        enabled: true,
        active_low,
        min_hold_ms: 500,
        pins: BTreeMap::from([
            (PinSignal::FacePresent, FACE_PRESENT),
            (PinSignal::Expression(Expression::Happiness), HAPPINESS),
            (PinSignal::Expression(Expression::Surprise), SURPRISE),
        ]),
        ..Default::default()
    }
}

fn event(kind: EventKind, id: u64, expression: Expression) -> TrackEvent {
    let mut scores = [0.05; Expression::COUNT];
    scores[expression.index()] = 0.7;
    TrackEvent {
        kind,
        id,
        bbox: [0.0, 0.0, 50.0, 50.0],
        expression,
        score: 0.7,
        scores: ExpressionScores(scores),
        start_time: 0.0,
        timestamp: 0.0,
    }
}

/// Changes as (milliseconds after `t0`, line, level).
fn timeline(changes: &[PinChange], t0: Instant) -> Vec<(u64, u32, Level)> {
    changes
        .iter()
        .map(|c| (c.at.duration_since(t0).as_millis() as u64, c.line, c.level))
        .collect()
}

/// The last level each line was driven to.
fn final_levels(changes: &[PinChange]) -> BTreeMap<u32, Level> {
    changes.iter().map(|c| (c.line, c.level)).collect()
}

/// Drives a sink through: a happy face that turns surprised and leaves,
/// then a 50 ms flicker of another happy face. Returns the changes seen
/// before shutdown, in ms after the start.
fn run_sequence(sink: &mut GpioSink, pins: &RecordingPins, t0: Instant) -> Vec<(u64, u32, Level)> {
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    use Expression::*;
    sink.events(&[event(EventKind::New, 1, Happiness)], at(0));
    sink.events(&[event(EventKind::Update, 1, Surprise)], at(100));
    sink.tick(at(300)); // happiness still held
    sink.tick(at(500)); // hold over: happiness off
    sink.events(&[event(EventKind::End, 1, Surprise)], at(700));
    sink.events(&[event(EventKind::New, 2, Happiness)], at(1000));
    sink.events(&[event(EventKind::End, 2, Happiness)], at(1050));
    sink.tick(at(1200));
    sink.tick(at(1499));
    sink.tick(at(1500));
    timeline(&pins.changes(), t0)
}

#[test]
fn pins_follow_events_with_a_minimum_hold_time() {
    use Level::*;
    let pins = RecordingPins::new();
    let mut sink = GpioSink::new(&config(false), Box::new(pins.clone())).unwrap();
    let t0 = Instant::now();
    let changes = run_sequence(&mut sink, &pins, t0);
    assert_eq!(
        changes,
        [
            (0, FACE_PRESENT, High),
            (0, HAPPINESS, High),
            (100, SURPRISE, High),
            (500, HAPPINESS, Low),
            (700, FACE_PRESENT, Low),
            (700, SURPRISE, Low),
            // The flicker: on at once, held for the whole 500 ms.
            (1000, FACE_PRESENT, High),
            (1000, HAPPINESS, High),
            (1500, FACE_PRESENT, Low),
            (1500, HAPPINESS, Low),
        ]
    );
    assert_eq!(sink.dropped(), 0);
}

#[test]
fn active_low_inverts_every_level() {
    let invert = |level| match level {
        Level::Low => Level::High,
        Level::High => Level::Low,
    };
    let high_pins = RecordingPins::new();
    let mut active_high = GpioSink::new(&config(false), Box::new(high_pins.clone())).unwrap();
    let low_pins = RecordingPins::new();
    let mut active_low = GpioSink::new(&config(true), Box::new(low_pins.clone())).unwrap();
    let t0 = Instant::now();
    let expected: Vec<_> = run_sequence(&mut active_high, &high_pins, t0)
        .into_iter()
        .map(|(ms, line, level)| (ms, line, invert(level)))
        .collect();
    assert_eq!(run_sequence(&mut active_low, &low_pins, t0), expected);
    assert_eq!(config(true).safe_levels()[0], (FACE_PRESENT, Level::High));
}

#[test]
fn shutdown_makes_every_pin_safe_at_once_and_only_once() {
    for active_low in [false, true] {
        let safe = if active_low { Level::High } else { Level::Low };
        let pins = RecordingPins::new();
        let mut sink = GpioSink::new(&config(active_low), Box::new(pins.clone())).unwrap();
        let t0 = Instant::now();
        sink.events(&[event(EventKind::New, 1, Expression::Surprise)], t0);
        let before = pins.changes().len();
        assert_eq!(before, 2, "face_present and surprise on");
        // Within the hold time: shutdown does not wait for it.
        sink.shutdown();
        let changes = pins.changes();
        let at_shutdown: Vec<u32> = changes[before..].iter().map(|c| c.line).collect();
        assert_eq!(at_shutdown, [FACE_PRESENT, HAPPINESS, SURPRISE]);
        assert!(final_levels(&changes).values().all(|&level| level == safe));
        sink.shutdown();
        drop(sink);
        assert_eq!(
            pins.changes().len(),
            changes.len(),
            "nothing after shutdown"
        );
    }
}

#[test]
fn dropping_the_sink_makes_every_pin_safe() {
    let pins = RecordingPins::new();
    {
        let mut sink = GpioSink::new(&config(true), Box::new(pins.clone())).unwrap();
        sink.events(
            &[event(EventKind::New, 4, Expression::Happiness)],
            Instant::now(),
        );
    }
    let levels = final_levels(&pins.changes());
    assert_eq!(levels.len(), 3);
    assert!(levels.values().all(|&level| level == Level::High));
}

#[test]
fn a_missing_gpio_chip_is_named_in_the_error() {
    let config = GpioConfig {
        backend: GpioBackend::Cdev,
        chip: "/dev/gpiochip-fer-edge-missing".into(),
        ..config(false)
    };
    let error = open_pins(&config).err().unwrap().to_string();
    assert!(
        error.contains("/dev/gpiochip-fer-edge-missing") && error.contains("[17, 27, 22]"),
        "{error}"
    );
}

/// `samples/sequence` at 10 fps: a face smiling (frames 0-9), the same face
/// neutral (10-21), then no face (22-37). Through the shipped model, the
/// default tracker and the sink: the pins a kiosk relay would see.
#[test]
fn pins_follow_the_recorded_sequence_through_detector_and_tracker() {
    if emulated() {
        common::skip(
            "38 frames of the network take 5 minutes under qemu; \
             tests/accuracy.rs runs the aarch64 detector",
        );
        return;
    }
    use Expression::*;
    use Level::*;
    const NEUTRAL: u32 = 23;
    let mut gpio = config(false);
    gpio.pins.insert(PinSignal::Expression(Neutral), NEUTRAL);
    let pins = RecordingPins::new();
    let mut sink = GpioSink::new(&gpio, Box::new(pins.clone())).unwrap();
    let model = Model::load(&repo("models/fer-yolo-mamba-nano.onnx")).unwrap();
    let mut detector = Detector::new(model, DecodeOptions::default());
    let mut tracker = Tracker::new(TrackerConfig::default());
    let mut frames: Vec<_> = std::fs::read_dir(repo("samples/sequence"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    frames.sort();
    assert_eq!(frames.len(), 38);
    let t0 = Instant::now();
    let mut at = t0;
    for (i, path) in frames.iter().enumerate() {
        let jpeg = std::fs::read(path).unwrap();
        let frame = Frame {
            format: PixelFormat::Mjpeg,
            width: 0,
            height: 0,
            data: &jpeg,
        };
        let faces = detector.detect(&frame).unwrap();
        at = t0 + Duration::from_millis(100 * i as u64);
        sink.events(&tracker.update(&faces, 0.1 * i as f64), at);
        sink.tick(at);
    }
    let changes = timeline(&pins.changes(), t0);
    let levels = |line, level| {
        changes
            .iter()
            .filter(|c| (c.1, c.2) == (line, level))
            .map(|c| c.0)
            .collect::<Vec<_>>()
    };
    // `new` on the third frame with the face (min_hits 3).
    assert_eq!(levels(FACE_PRESENT, High), [200], "{changes:?}");
    assert_eq!(levels(HAPPINESS, High), [200], "{changes:?}");
    // Neutral a few frames after the switch at frame 10 (smoothing and
    // hysteresis); happiness released at that moment (its hold long over).
    let neutral_on = levels(NEUTRAL, High);
    assert_eq!(neutral_on.len(), 1, "{changes:?}");
    assert!((1000..=1500).contains(&neutral_on[0]), "{changes:?}");
    assert_eq!(levels(HAPPINESS, Low), neutral_on, "{changes:?}");
    // `end` once the face has been gone for lost_after_s (1 s) after frame 21.
    let gone = levels(FACE_PRESENT, Low);
    assert_eq!(gone.len(), 1, "{changes:?}");
    assert!((3100..=3300).contains(&gone[0]), "{changes:?}");
    assert_eq!(levels(NEUTRAL, Low), gone, "{changes:?}");
    assert_eq!(changes.len(), 6, "{changes:?}");
    assert!(gone[0] <= at.duration_since(t0).as_millis() as u64);
    sink.shutdown();
    assert!(final_levels(&pins.changes()).values().all(|&l| l == Low));
}
