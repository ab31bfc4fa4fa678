//! The kiosk service, `fer-edge run`: capture -> detect -> track -> signal,
//! until SIGTERM or SIGINT (or the end of a file source).
//!
//! The loop always takes the newest frame (the capture thread drops stale
//! ones), runs the detector, feeds the tracker and hands its events to the
//! sinks. Every `service.stats_interval_s` it reports the counters to the
//! sinks and the status file. It pets the systemd watchdog only while the
//! loop turns and the capture thread shows signs of life (frames, or
//! reconnect attempts to a missing camera): a hung inference or a stuck
//! camera driver gets the service restarted, an unplugged camera is waited
//! for. On a stop signal it finishes the frame in hand, ends every track,
//! publishes `offline`, returns the pins to their safe state and returns.

pub mod metrics;
pub mod snapshot;
pub mod status;
pub mod systemd;

use crate::capture::{Capture, CaptureConfig, CaptureStats, CapturedFrame, SourceKind};
use crate::config::Config;
use crate::detector::{DetectError, Detector};
use crate::preprocess::Frame;
use crate::signal::{build_sinks, Sink, Sinks, Stats};
use crate::track::Tracker;
use crate::unix_now;
use anyhow::Context;
use metrics::{MetricsServer, Monitor, Turn};
use snapshot::Snapshots;
use status::Status;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use systemd::Systemd;

/// How long the loop waits for a frame before doing its housekeeping.
const FRAME_WAIT: Duration = Duration::from_millis(200);

/// The signals the service acts on. A first SIGTERM or SIGINT asks for the
/// clean stop; a second one, while that runs, exits at once (status 128 +
/// the signal's number), as an impatient operator means. SIGHUP (the unit's
/// `ExecReload=`) asks for the config and the model to be read again.
struct Signals {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let stop = Arc::new(AtomicBool::new(false));
        for signal in [SIGTERM, SIGINT] {
            // Registered first, so it sees the flag as the previous signal left it.
            signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, stop.clone())
                .and_then(|_| signal_hook::flag::register(signal, stop.clone()))
                .context("cannot install the SIGTERM/SIGINT handlers")?;
        }
        let reload = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(SIGHUP, reload.clone())
            .context("cannot install the SIGHUP handler")?;
        Ok(Signals { stop, reload })
    }
}

/// Runs the service with `config` until stopped; `Ok` on a clean stop. On
/// SIGHUP, `reload` reads the config again (see `Service::reload`).
pub fn run(config: Config, reload: &dyn Fn() -> anyhow::Result<Config>) -> anyhow::Result<()> {
    let signals = Signals::install()?;
    let mut systemd = Systemd::from_env();
    let detector = Detector::from_config(&config.detector)?;
    let snapshots = Snapshots::from_config(&config.snapshot)?;
    let sinks = build_sinks(&config.log, &config.mqtt, &config.gpio)?;
    log::info!("signalling to: {}", sinks.names().join(", "));
    let capture = Capture::start(&config.capture)?;
    let (monitor, metrics_server) = match config.http.listen {
        Some(address) => {
            let model = detector.model();
            let (monitor, registry) = Monitor::new(
                &model.source().to_string(),
                model.sha256(),
                config.mqtt.enabled,
            );
            let server = MetricsServer::start(address, registry, Arc::clone(&monitor))?;
            (Some(monitor), Some(server))
        }
        None => (None, None),
    };
    let mut service = Service {
        tracker: Tracker::new(config.tracker),
        config,
        detector,
        capture,
        sinks,
        snapshots,
        stats: Stats::default(),
        period: Period::new(Instant::now()),
        started_at: unix_now(),
        undecodable: 0,
        status_failed: false,
        monitor,
    };
    systemd.ready(&format!("reading {}", source_name(&service.config.capture)));
    let outcome = service.run_until(&signals, reload, &mut systemd);
    systemd.stopping();
    service.shut_down();
    drop(metrics_server);
    outcome
}

struct Service {
    config: Config,
    detector: Detector,
    capture: Capture,
    tracker: Tracker,
    sinks: Sinks,
    snapshots: Option<Snapshots>,
    stats: Stats,
    period: Period,
    started_at: f64,
    /// Frames the capture delivered but the detector could not decode
    /// (counted with the capture's corrupt frames).
    undecodable: u64,
    /// The status file could not be written (warned once).
    status_failed: bool,
    /// What the `/metrics` listener serves, when `[http] listen` is set.
    monitor: Option<Arc<Monitor>>,
}

/// Frames and inference time since the last report.
struct Period {
    start: Instant,
    frames: u32,
    inference: Duration,
}

impl Period {
    fn new(start: Instant) -> Self {
        Period {
            start,
            frames: 0,
            inference: Duration::ZERO,
        }
    }
}

impl Service {
    fn run_until(
        &mut self,
        signals: &Signals,
        reload: &dyn Fn() -> anyhow::Result<Config>,
        systemd: &mut Systemd,
    ) -> anyhow::Result<()> {
        let mut next_report = Instant::now() + self.report_interval();
        let mut stalled = false;
        while !signals.stop.load(Ordering::Relaxed) {
            if signals.reload.swap(false, Ordering::Relaxed) {
                systemd.reloading();
                self.reload(reload());
                systemd.ready(&format!("reading {}", source_name(&self.config.capture)));
            }
            let frame = self.capture.latest(FRAME_WAIT);
            let now = Instant::now();
            let inference = match &frame {
                Some(frame) => self.process(frame, now)?,
                None if self.capture.is_finished() => {
                    log::info!("the source has no more frames; stopping");
                    break;
                }
                // No frame: tracks still end on time.
                None => {
                    let events = self.tracker.update(&[], unix_now());
                    self.sinks.events(&events, now);
                    None
                }
            };
            self.sinks.tick(now);
            if self.capture.is_alive(self.capture_tolerance()) {
                systemd.pet(now);
                if stalled {
                    stalled = false;
                    systemd.status(&format!("reading {}", source_name(&self.config.capture)));
                }
            } else if !stalled {
                stalled = true;
                log::error!("capture: no sign of life from the source; the watchdog will fire");
                systemd.status("capture stalled");
            }
            self.observe_turn(now, inference);
            if now >= next_report {
                self.report(now, "running");
                next_report = now + self.report_interval();
            }
        }
        Ok(())
    }

    fn report_interval(&self) -> Duration {
        Duration::from_secs_f64(self.config.service.stats_interval_s)
    }

    /// How long the capture thread may show no sign of life: a camera blocks
    /// up to its frame timeout before it reports failure; a paced file
    /// source sleeps a frame interval between frames.
    fn capture_tolerance(&self) -> Duration {
        let capture = &self.config.capture;
        let frame_interval = if capture.fps > 0.0 {
            Duration::from_secs_f64(1.0 / capture.fps)
        } else {
            Duration::ZERO
        };
        Duration::from_millis(capture.frame_timeout_ms) + frame_interval + Duration::from_secs(1)
    }

    /// Switches to the config `loaded` on SIGHUP, or keeps the current one
    /// (with a logged error) when it could not be read or checked, or the
    /// model does not load.
    fn reload(&mut self, loaded: anyhow::Result<Config>) {
        match loaded.and_then(|new| self.apply(new)) {
            Ok(restarted) => log::info!(
                "reloaded the config and the model; restarted: {}",
                if restarted.is_empty() {
                    "nothing else".to_string()
                } else {
                    restarted.join(", ")
                }
            ),
            Err(e) => log::error!("reload refused, the previous config stays: {e:#}"),
        }
    }

    /// Applies `new`: the model is always loaded again (its file may have
    /// been replaced); each part whose table changed is restarted; the
    /// others, an MQTT session among them, go on untouched. Returns the
    /// parts restarted. Nothing changes when it fails, except the sinks or
    /// the capture, which fall back to their previous config, and the
    /// inference thread count, which is set before the new model loads.
    fn apply(&mut self, new: Config) -> anyhow::Result<Vec<&'static str>> {
        anyhow::ensure!(
            new.http == self.config.http,
            "`http` changes take effect at the next start"
        );
        let detector = Detector::from_config(&new.detector)?;
        let snapshots = if new.snapshot != self.config.snapshot {
            Some(Snapshots::from_config(&new.snapshot)?)
        } else {
            None
        };
        let mut restarted = Vec::new();
        let sinks_changed = (&new.log, &new.mqtt, &new.gpio)
            != (&self.config.log, &self.config.mqtt, &self.config.gpio);
        if sinks_changed || new.tracker != self.config.tracker {
            let events = self.tracker.finish(unix_now());
            self.sinks.events(&events, Instant::now());
            self.tracker = Tracker::new(new.tracker);
            restarted.push("tracker");
        }
        if sinks_changed {
            self.sinks.shutdown();
            self.sinks = match build_sinks(&new.log, &new.mqtt, &new.gpio) {
                Ok(sinks) => sinks,
                Err(e) => {
                    self.sinks =
                        build_sinks(&self.config.log, &self.config.mqtt, &self.config.gpio)
                            .context("the previous sinks do not start again either")?;
                    return Err(e).context("the new sinks do not start; the previous ones run");
                }
            };
            restarted.push("sinks");
        }
        if new.capture != self.config.capture {
            self.capture.stop();
            self.capture = match Capture::start(&new.capture) {
                Ok(capture) => capture,
                Err(e) => {
                    self.capture = Capture::start(&self.config.capture)?;
                    return Err(e).context("the new capture does not start; the previous one runs");
                }
            };
            restarted.push("capture");
        }
        if let Some(snapshots) = snapshots {
            self.snapshots = snapshots;
            restarted.push("snapshots");
        }
        self.detector = detector;
        self.config = new;
        Ok(restarted)
    }

    /// Detects, tracks and signals one frame; returns its network time. A
    /// frame that cannot be decoded is skipped and counted (`None`); an
    /// inference failure stops the service.
    fn process(
        &mut self,
        captured: &CapturedFrame,
        now: Instant,
    ) -> anyhow::Result<Option<Duration>> {
        let frame = Frame {
            format: captured.format,
            width: captured.width,
            height: captured.height,
            data: &captured.data,
        };
        let (faces, timings) = match self.detector.detect_timed(&frame) {
            Ok(result) => result,
            Err(DetectError::Preprocess(e)) => {
                self.undecodable += 1;
                if self.undecodable.is_power_of_two() {
                    log::warn!(
                        "skipped undecodable frame {} of {} ({} so far): {e}",
                        captured.sequence,
                        source_name(&self.config.capture),
                        self.undecodable
                    );
                }
                return Ok(None);
            }
            Err(e) => return Err(e).context("inference failed"),
        };
        // Event times are wall-clock (Unix seconds) at capture.
        let captured_at = unix_now() - now.duration_since(captured.captured_at).as_secs_f64();
        let events = self.tracker.update(&faces, captured_at);
        self.stats.frames += 1;
        self.stats.count_events(&events);
        self.period.frames += 1;
        self.period.inference += timings.infer;
        self.sinks.events(&events, now);
        if let Some(snapshots) = &mut self.snapshots {
            match snapshots.on_frame(&frame, &faces, &events, now) {
                Ok(Some(path)) => log::info!("snapshot {}", path.display()),
                Ok(None) => {}
                Err(e) => log::warn!("snapshot failed: {e:#}"),
            }
        }
        Ok(Some(timings.infer))
    }

    /// Publishes the counters and rewrites the status file with `state`.
    fn report(&mut self, now: Instant, state: &str) {
        let elapsed = now.duration_since(self.period.start).as_secs_f32();
        self.stats.fps = if elapsed > 0.0 {
            self.period.frames as f32 / elapsed
        } else {
            0.0
        };
        self.stats.inference_ms = if self.period.frames > 0 {
            self.period.inference.as_secs_f32() * 1e3 / self.period.frames as f32
        } else {
            0.0
        };
        self.count_lost_frames();
        self.stats.sink_dropped = self.sinks.dropped_by_sink();
        self.stats.capture = self.capture.state();
        self.stats.mqtt = self.sinks.get("mqtt").and_then(|sink| sink.link());
        self.sinks.stats(&self.stats);
        if let Some(monitor) = &self.monitor {
            monitor.fps(self.stats.fps);
        }
        self.write_status(state);
        self.period = Period::new(now);
    }

    /// Copies the capture's dropped and corrupt frames (with the frames the
    /// detector could not decode) into the counters; returns its stats.
    fn count_lost_frames(&mut self) -> CaptureStats {
        let capture = self.capture.stats();
        self.stats.dropped_frames = capture.dropped;
        self.stats.corrupt_frames = capture.corrupt + self.undecodable;
        capture
    }

    /// Tells the `/metrics` listener the counters, this turn's inference
    /// time, the source and the sinks.
    fn observe_turn(&mut self, now: Instant, inference: Option<Duration>) {
        let Some(monitor) = self.monitor.clone() else {
            return;
        };
        let capture = self.count_lost_frames();
        let mqtt = self.sinks.get("mqtt").map(|sink| {
            let link = sink.link().unwrap_or_default();
            (link.connected, link.pending, sink.dropped())
        });
        let turn = Turn {
            stats: &self.stats,
            faces_visible: self.tracker.visible(),
            source_open: self.capture.is_open(),
            source_reconnects: capture.reconnects,
            mqtt,
            inference,
        };
        monitor.turn(now, &turn);
    }

    fn write_status(&mut self, state: &str) {
        let path = &self.config.service.status_file;
        if path.as_os_str().is_empty() || self.status_failed {
            return;
        }
        let source = match self.capture.stream_format() {
            Some(format) => format!("{} ({format})", source_name(&self.config.capture)),
            None => source_name(&self.config.capture),
        };
        let status = Status {
            state: state.into(),
            pid: std::process::id(),
            started_at: self.started_at,
            updated_at: unix_now(),
            model: self.detector.model().source().to_string(),
            device: format!("{:?}", self.config.detector.device).to_lowercase(),
            source,
            capture_alive: self.capture.is_open(),
            faces_visible: self.tracker.visible(),
            stats: serde_json::Value::Null,
        }
        .with_stats(&self.stats);
        if let Err(e) = status::write(path, &status) {
            log::warn!("status file disabled: {e:#}");
            self.status_failed = true;
        }
    }

    /// Ends every track, reports once more, and leaves the sinks safe.
    fn shut_down(&mut self) {
        let now = Instant::now();
        let events = self.tracker.finish(unix_now());
        self.sinks.events(&events, now);
        self.capture.stop();
        self.report(now, "stopped");
        self.sinks.shutdown();
        log::info!(
            "stopped after {} frames, {} faces",
            self.stats.frames,
            self.stats.faces
        );
    }
}

/// The source, for logs and the status: `camera /dev/video0`, `image_dir x`.
pub fn source_name(capture: &CaptureConfig) -> String {
    match (capture.source, &capture.path) {
        (SourceKind::V4l2, _) => format!("camera {}", capture.device.display()),
        (kind, path) => {
            let kind = serde_json::to_value(kind).unwrap_or_default();
            let kind = kind.as_str().unwrap_or("file");
            match path {
                Some(path) => format!("{kind} {}", path.display()),
                None => kind.to_string(),
            }
        }
    }
}
