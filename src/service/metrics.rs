//! Fleet monitoring, opt-in (`[http] listen`): an HTTP listener on its own
//! thread serving the service's counters at `/metrics` in the Prometheus
//! text format (OpenMetrics 1.0, as `prometheus-client` writes it) and its
//! health at `/healthz`: 200 while the frame loop turns and the frame source
//! is open, 503 otherwise. The frame loop only updates atomics ([`Monitor`]),
//! all of a turn's at once, so a scrape never sees half a turn (a frame's
//! inference counted but not the frame); nothing but counters leaves the device.

use crate::face::Expression;
use crate::signal::Stats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `[http]` table.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the `/metrics` and `/healthz` listener, e.g.
    /// `127.0.0.1:9464`; no listener when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// `/healthz` fails once the frame loop has not turned for this long (a
/// turn is one frame's inference, or a 200 ms wait for a frame).
pub const LOOP_STALL: Duration = Duration::from_secs(10);

/// Upper bounds of the inference-time histogram's buckets, seconds: from a
/// desktop core (10 ms) to a Pi Zero 2 (2 s).
const INFERENCE_BUCKETS: [f64; 12] = [
    0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0, 5.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExpressionLabel {
    expression: &'static str,
}

/// What the frame loop reports to the listener: metric handles (shared
/// with the listener's registry) and the health state.
pub struct Monitor {
    frames: Counter,
    faces: Counter,
    expressions: Family<ExpressionLabel, Counter>,
    faces_visible: Gauge,
    fps: Gauge<f64, AtomicU64>,
    inference: Histogram,
    dropped_frames: Counter,
    corrupt_frames: Counter,
    source_reconnects: Counter,
    source_open: Gauge,
    mqtt: Option<MqttMetrics>,
    started: Instant,
    /// Milliseconds from `started` to the loop's last turn.
    last_turn_ms: AtomicU64,
    source_is_open: AtomicBool,
    /// Held to write while a turn updates the metrics, to read while a
    /// scrape encodes them.
    turn_lock: RwLock<()>,
}

struct MqttMetrics {
    connected: Gauge,
    pending: Gauge,
    dropped: Counter,
}

/// What the frame loop knows each turn: its counters, the source, the sinks.
#[derive(Clone, Copy, Debug)]
pub struct Turn<'a> {
    /// The service's counters since start (frames, faces, expressions,
    /// dropped and corrupt frames), the ones `fer-edge status` shows.
    pub stats: &'a Stats,
    pub faces_visible: usize,
    pub source_open: bool,
    pub source_reconnects: u64,
    /// MQTT connected, messages waiting for the broker, messages lost.
    pub mqtt: Option<(bool, usize, u64)>,
    /// The network time of the frame this turn processed, if it had one.
    pub inference: Option<Duration>,
}

impl Monitor {
    /// The metrics, registered in a new registry (returned for the
    /// listener). `model` and `sha256` name the model in `fer_edge_build_info`.
    pub fn new(model: &str, sha256: &str, mqtt: bool) -> (Arc<Monitor>, Registry) {
        let mut registry = Registry::with_prefix("fer_edge");
        registry.register(
            "build",
            "The fer-edge version and the model it runs",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("model", model.to_string()),
                ("model_sha256", sha256.to_string()),
            ]),
        );
        let monitor = Monitor {
            frames: Counter::default(),
            faces: Counter::default(),
            expressions: Family::default(),
            faces_visible: Gauge::default(),
            fps: Gauge::default(),
            inference: Histogram::new(INFERENCE_BUCKETS),
            dropped_frames: Counter::default(),
            corrupt_frames: Counter::default(),
            source_reconnects: Counter::default(),
            source_open: Gauge::default(),
            mqtt: mqtt.then(|| MqttMetrics {
                connected: Gauge::default(),
                pending: Gauge::default(),
                dropped: Counter::default(),
            }),
            started: Instant::now(),
            last_turn_ms: AtomicU64::new(0),
            source_is_open: AtomicBool::new(false),
            turn_lock: RwLock::new(()),
        };
        let m = &monitor;
        let r = &mut registry;
        r.register("frames", "Frames processed", m.frames.clone());
        r.register("faces", "Faces announced (tracks started)", m.faces.clone());
        r.register(
            "expressions",
            "Expressions announced or switched to, by expression",
            m.expressions.clone(),
        );
        r.register(
            "faces_visible",
            "Faces on screen now",
            m.faces_visible.clone(),
        );
        r.register(
            "fps",
            "Frames per second over the last stats interval",
            m.fps.clone(),
        );
        r.register_with_unit(
            "inference",
            "Network time per frame",
            prometheus_client::registry::Unit::Seconds,
            m.inference.clone(),
        );
        r.register(
            "dropped_frames",
            "Frames the source delivered that the loop had no time for",
            m.dropped_frames.clone(),
        );
        r.register(
            "corrupt_frames",
            "Frames that could not be decoded",
            m.corrupt_frames.clone(),
        );
        r.register(
            "source_reconnects",
            "Times the frame source was opened again after it failed",
            m.source_reconnects.clone(),
        );
        r.register(
            "source_open",
            "1 while the camera (or file source) is open, else 0",
            m.source_open.clone(),
        );
        for expression in Expression::ALL {
            // Every expression shows from the start, at 0.
            let _ = m.expressions.get_or_create(&ExpressionLabel {
                expression: expression.name(),
            });
        }
        if let Some(mqtt) = &m.mqtt {
            r.register(
                "mqtt_connected",
                "1 while the MQTT broker accepts the connection",
                mqtt.connected.clone(),
            );
            r.register(
                "mqtt_pending_messages",
                "Messages waiting for the broker's acknowledgement",
                mqtt.pending.clone(),
            );
            r.register(
                "mqtt_dropped_messages",
                "Messages that could not be delivered",
                mqtt.dropped.clone(),
            );
        }
        (Arc::new(monitor), registry)
    }

    /// One turn of the frame loop (with or without a frame), at `now`.
    pub fn turn(&self, now: Instant, turn: &Turn) {
        let _turn = self.turn_lock.write().unwrap_or_else(|e| e.into_inner());
        if let Some(inference) = turn.inference {
            self.inference.observe(inference.as_secs_f64());
        }
        let since_start = now.saturating_duration_since(self.started).as_millis();
        self.last_turn_ms
            .store(since_start as u64, Ordering::Relaxed);
        self.source_is_open
            .store(turn.source_open, Ordering::Relaxed);
        self.source_open.set(i64::from(turn.source_open));
        self.faces_visible.set(turn.faces_visible as i64);
        let stats = turn.stats;
        raise(&self.frames, stats.frames);
        raise(&self.faces, stats.faces);
        for expression in Expression::ALL {
            let label = ExpressionLabel {
                expression: expression.name(),
            };
            raise(
                &self.expressions.get_or_create(&label),
                stats.expressions.get(expression),
            );
        }
        raise(&self.dropped_frames, stats.dropped_frames);
        raise(&self.corrupt_frames, stats.corrupt_frames);
        raise(&self.source_reconnects, turn.source_reconnects);
        if let (Some(metrics), Some((connected, pending, dropped))) = (&self.mqtt, turn.mqtt) {
            metrics.connected.set(i64::from(connected));
            metrics.pending.set(pending as i64);
            raise(&metrics.dropped, dropped);
        }
    }

    /// Frames per second over the last stats interval.
    pub fn fps(&self, fps: f32) {
        self.fps.set(f64::from(fps));
    }

    /// `None` when healthy, else why not.
    fn unhealthy(&self, now: Instant) -> Option<String> {
        let last_turn = Duration::from_millis(self.last_turn_ms.load(Ordering::Relaxed));
        let idle = now.saturating_duration_since(self.started + last_turn);
        if idle > LOOP_STALL {
            return Some(format!(
                "the frame loop has not turned for {:.0} s",
                idle.as_secs_f64()
            ));
        }
        if !self.source_is_open.load(Ordering::Relaxed) {
            return Some("the frame source is not open (camera missing or failing)".into());
        }
        None
    }
}

/// Raises a counter to `total` (a count kept elsewhere since start).
fn raise(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// The running listener; stops (and joins its thread) on drop.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `address` and serves `registry` and `monitor`'s health.
    pub fn start(
        address: SocketAddr,
        registry: Registry,
        monitor: Arc<Monitor>,
    ) -> anyhow::Result<MetricsServer> {
        let server = tiny_http::Server::http(address)
            .map_err(|e| anyhow::anyhow!("[http] listen: cannot listen on {address}: {e}"))?;
        let server = Arc::new(server);
        let thread = std::thread::Builder::new().name("fer-http".into()).spawn({
            let server = Arc::clone(&server);
            move || serve(&server, &registry, &monitor)
        })?;
        log::info!("serving /metrics and /healthz on http://{address}");
        Ok(MetricsServer {
            server,
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers requests one at a time until the server is unblocked.
fn serve(server: &tiny_http::Server, registry: &Registry, monitor: &Monitor) {
    for request in server.incoming_requests() {
        let (status, content_type, body) =
            respond(request.method(), request.url(), registry, monitor);
        let response = tiny_http::Response::from_string(body)
            .with_status_code(status)
            .with_header(
                tiny_http::Header::from_bytes("Content-Type", content_type)
                    .expect("a valid header"),
            );
        if let Err(e) = request.respond(response) {
            log::debug!("http: cannot answer: {e}");
        }
    }
}

const TEXT: &str = "text/plain; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn respond(
    method: &tiny_http::Method,
    url: &str,
    registry: &Registry,
    monitor: &Monitor,
) -> (u16, &'static str, String) {
    if *method != tiny_http::Method::Get {
        return (405, TEXT, "only GET\n".into());
    }
    match url.split('?').next().unwrap_or_default() {
        "/metrics" => {
            let mut body = String::new();
            let _whole_turns = monitor.turn_lock.read().unwrap_or_else(|e| e.into_inner());
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => (200, OPENMETRICS, body),
                Err(e) => (500, TEXT, format!("cannot encode the metrics: {e}\n")),
            }
        }
        "/healthz" => match monitor.unhealthy(Instant::now()) {
            None => (200, TEXT, "ok\n".into()),
            Some(why) => (503, TEXT, format!("unhealthy: {why}\n")),
        },
        _ => (404, TEXT, "not found: try /metrics or /healthz\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::test_events::event;
    use crate::track::EventKind;

    fn scrape(registry: &Registry, monitor: &Monitor) -> String {
        respond(&tiny_http::Method::Get, "/metrics", registry, monitor).2
    }

    /// A turn with `stats` and `inference`, the source open, no face on
    /// screen, no MQTT.
    fn open_turn(stats: &Stats, inference: Option<Duration>) -> Turn<'_> {
        Turn {
            stats,
            faces_visible: 0,
            source_open: true,
            source_reconnects: 0,
            mqtt: None,
            inference,
        }
    }

    #[test]
    fn counters_follow_frames_events_and_turns() {
        let (monitor, registry) = Monitor::new("built-in model m.onnx", "ab12", true);
        let mut stats = Stats {
            dropped_frames: 3,
            corrupt_frames: 1,
            ..Stats::default()
        };
        for (inference_ms, event) in [
            (60, event(EventKind::New, 1, Expression::Happiness)),
            (40, event(EventKind::Update, 1, Expression::Surprise)),
        ] {
            stats.frames += 1;
            stats.count_events(&[event]);
            let turn = Turn {
                faces_visible: 1,
                mqtt: Some((true, 2, 5)),
                ..open_turn(&stats, Some(Duration::from_millis(inference_ms)))
            };
            monitor.turn(Instant::now(), &turn);
        }
        // A turn without a frame adds no inference.
        let idle = Turn {
            faces_visible: 1,
            mqtt: Some((true, 2, 5)),
            ..open_turn(&stats, None)
        };
        monitor.turn(Instant::now(), &idle);
        let text = scrape(&registry, &monitor);
        for line in [
            "fer_edge_frames_total 2",
            "fer_edge_faces_total 1",
            "fer_edge_expressions_total{expression=\"happiness\"} 1",
            "fer_edge_expressions_total{expression=\"surprise\"} 1",
            "fer_edge_expressions_total{expression=\"fear\"} 0",
            "fer_edge_dropped_frames_total 3",
            "fer_edge_corrupt_frames_total 1",
            "fer_edge_mqtt_connected 1",
            "fer_edge_mqtt_pending_messages 2",
            "fer_edge_mqtt_dropped_messages_total 5",
            "fer_edge_inference_seconds_count 2",
            "fer_edge_inference_seconds_bucket{le=\"0.05\"} 1",
            "fer_edge_build_info{version=",
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// The number on a sample line `name value` of an exposition.
    fn sample(text: &str, name: &str) -> f64 {
        let line = text
            .lines()
            .find(|line| line.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line[name.len() + 1..].parse().unwrap()
    }

    /// Scrapes taken while another thread turns the loop see whole turns:
    /// as many inferences as frames, every time.
    #[test]
    fn a_scrape_during_turns_sees_whole_turns() {
        let (monitor, registry) = Monitor::new("m", "s", false);
        let turns = std::thread::spawn({
            let monitor = Arc::clone(&monitor);
            move || {
                let mut stats = Stats::default();
                for _ in 0..20_000 {
                    stats.frames += 1;
                    let turn = open_turn(&stats, Some(Duration::from_millis(30)));
                    monitor.turn(Instant::now(), &turn);
                }
            }
        });
        let mut scrapes = 0;
        while !turns.is_finished() || scrapes == 0 {
            let text = scrape(&registry, &monitor);
            assert_eq!(
                sample(&text, "fer_edge_inference_seconds_count"),
                sample(&text, "fer_edge_frames_total"),
                "{text}"
            );
            scrapes += 1;
        }
        turns.join().unwrap();
        let text = scrape(&registry, &monitor);
        assert_eq!(sample(&text, "fer_edge_frames_total"), 20_000.0, "{text}");
    }

    #[test]
    fn health_needs_a_turning_loop_and_an_open_source() {
        let (monitor, registry) = Monitor::new("m", "s", false);
        let health = |at| monitor.unhealthy(at);
        let now = Instant::now();
        assert!(health(now).unwrap().contains("not open"));
        let stats = Stats::default();
        monitor.turn(now, &open_turn(&stats, None));
        assert_eq!(health(now), None);
        let later = now + LOOP_STALL + Duration::from_secs(1);
        assert!(
            health(later).unwrap().contains("not turned"),
            "{:?}",
            health(later)
        );
        let (status, _, _) = respond(&tiny_http::Method::Get, "/nope", &registry, &monitor);
        assert_eq!(status, 404);
        assert!(!scrape(&registry, &monitor).contains("mqtt"));
    }

    /// The metric names of an exposition's samples.
    fn sample_names(text: &str) -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| line.split(['{', ' ']).next().unwrap().to_string())
            .collect()
    }

    /// `docs/grafana/fer-edge.json` queries exactly the metrics the service
    /// serves: none it does not have, and every one it has.
    #[test]
    fn the_grafana_dashboard_uses_exactly_the_served_metrics() {
        let (monitor, registry) = Monitor::new("m", "s", true);
        let stats = Stats::default();
        let turn = open_turn(&stats, Some(Duration::from_millis(50)));
        monitor.turn(Instant::now(), &turn);
        let served = sample_names(&scrape(&registry, &monitor));
        let dashboard = include_str!("../../docs/grafana/fer-edge.json");
        let used: std::collections::BTreeSet<String> = dashboard
            .match_indices("fer_edge_")
            .map(|(at, _)| {
                let name: String = dashboard[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                name
            })
            .collect();
        let unknown: Vec<_> = used.difference(&served).collect();
        assert!(
            unknown.is_empty(),
            "the dashboard queries unknown {unknown:?}"
        );
        let unused: Vec<_> = served.difference(&used).collect();
        assert!(unused.is_empty(), "the dashboard shows no {unused:?}");
    }
}
