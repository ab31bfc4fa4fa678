//! The service end to end: the real `fer-edge run` binary, the shipped model,
//! a real mosquitto broker on a free loopback port, and the recorded sequence
//! `samples/sequence` (one person smiling, then neutral, then gone) as the
//! frame source. A subscriber asserts what a home-automation system would
//! see: `new` -> `update` -> `end` for the face, retained availability with
//! the last will when the process is killed, a clean `offline` on SIGTERM,
//! and no event lost across a broker restart. The systemd notifications
//! (READY, WATCHDOG, STOPPING) go to a socket the test listens on.
//! Skipped, loudly, without mosquitto, and under qemu, where one frame of
//! the network takes about 8 s (the aarch64 build runs the same code paths
//! in tests/accuracy.rs and tests/signal_mqtt.rs).

#[path = "common/broker.rs"]
mod broker;
mod common;

use broker::*;
use common::emulated;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Frames of `samples/sequence`, and how the model sees them.
const SEQUENCE: &str = "samples/sequence";
const SEQUENCE_FRAMES: u64 = 38;

/// Returns from the test, saying so on stderr, under qemu or without mosquitto.
macro_rules! require_native_and_mosquitto {
    () => {
        if emulated() {
            common::skip("the end-to-end service test runs natively only (8 s a frame under qemu)");
            return;
        }
        require_mosquitto!();
    };
}

/// The service, started with a config of its own.
struct Service {
    child: Child,
    dir: TempDir,
}

impl Service {
    /// Starts `fer-edge run` publishing to the broker on `port` as device
    /// `device`, with `--set` `overrides`.
    fn start(port: u16, device: &str, overrides: &[&str]) -> Service {
        Service::spawn(port, device, overrides, false).0
    }

    /// Like [`Service::start`], under a stand-in for systemd that asks for
    /// a 2 s watchdog; the notifications arrive on the returned channel.
    fn start_notified(
        port: u16,
        device: &str,
        overrides: &[&str],
    ) -> (Service, mpsc::Receiver<String>) {
        let (service, notifications) = Service::spawn(port, device, overrides, true);
        (service, notifications.unwrap())
    }

    fn spawn(
        port: u16,
        device: &str,
        overrides: &[&str],
        under_systemd: bool,
    ) -> (Service, Option<mpsc::Receiver<String>>) {
        let dir = TempDir::new();
        let repo = env!("CARGO_MANIFEST_DIR");
        let config = dir.file("config.toml");
        // One inference thread and 5 fps: the tests run side by side, three
        // services on a 2-core CI machine, and each must still keep up.
        std::fs::write(
            &config,
            format!(
                "[detector]\nmodel = \"{repo}/models/fer-yolo-mamba-nano.onnx\"\nthreads = 1\n\
                 [capture]\nsource = \"image_dir\"\npath = \"{repo}/{SEQUENCE}\"\nfps = 5.0\n\
                 [log]\nenabled = false\n\
                 [mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\n\
                 device_id = \"{device}\"\nkeep_alive_s = 2\nreconnect_max_ms = 500\n\
                 [service]\nstats_interval_s = 1.0\nstatus_file = \"{status}\"\n",
                status = dir.file("status.json").display()
            ),
        )
        .unwrap();
        // Through `sh`, so WATCHDOG_PID can name the process before it starts,
        // as systemd does: `exec` keeps the shell's pid.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg("WATCHDOG_PID=$$ exec \"$@\"")
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_fer-edge"))
            .args(["run", "--config"])
            .arg(&config)
            .args(overrides.iter().flat_map(|o| ["--set", o]))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // Read at once, as systemd does: a datagram socket holds only a few
        // unread messages (net.unix.max_dgram_qlen) before senders block.
        let notifications = under_systemd.then(|| {
            let path = dir.file("notify.sock");
            let socket = UnixDatagram::bind(&path).unwrap();
            command
                .env("NOTIFY_SOCKET", &path)
                .env("WATCHDOG_USEC", "2000000");
            let (sender, receiver) = mpsc::channel();
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(n) = socket.recv(&mut buffer) {
                    let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
                    if sender.send(message).is_err() {
                        return;
                    }
                }
            });
            receiver
        });
        let child = command.spawn().unwrap();
        (Service { child, dir }, notifications)
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "fer-edge did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn status(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.file("status.json")).unwrap()).unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(type, id, expression)` of an event message.
fn event(message: &Received) -> (String, u64, String) {
    let payload = message.json();
    (
        payload["type"].as_str().unwrap().to_string(),
        payload["id"].as_u64().unwrap(),
        payload["expression"].as_str().unwrap().to_string(),
    )
}

/// Every notification received, until none comes for 200 ms.
fn notifications(received: &mpsc::Receiver<String>) -> Vec<String> {
    std::iter::from_fn(|| received.recv_timeout(Duration::from_millis(200)).ok()).collect()
}

/// GET `path` from the service's HTTP listener on `port`: the status code
/// and the body; `None` while nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The samples of a Prometheus text exposition (OpenMetrics 1.0), by
/// `name{labels}`. Panics on anything out of the format: a sample of a
/// family with no `# TYPE`, a value that is not a number, no `# EOF` last.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut families = Vec::new();
    let mut samples = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.split_whitespace();
            let (kind, name) = (words.next().unwrap(), words.next().unwrap());
            assert!(["HELP", "TYPE", "UNIT"].contains(&kind), "{line}");
            if kind == "TYPE" {
                families.push(name.to_string());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            families
                .iter()
                .any(|family| name.starts_with(family.as_str())),
            "sample {name} has no # TYPE"
        );
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        samples.insert(series.to_string(), value);
    }
    samples
}

#[test]
fn a_recorded_sequence_gives_new_update_end_and_a_clean_exit() {
    require_native_and_mosquitto!();
    let broker = Broker::start();
    let subscriber = Subscriber::connect(broker.port, "fer-edge/seq/#");
    let http = free_port();
    let listen = format!("http.listen=127.0.0.1:{http}");
    let (mut service, notify) = Service::start_notified(broker.port, "seq", &[&listen]);

    assert_eq!(
        subscriber.next_on("fer-edge/seq/availability").text(),
        "online"
    );
    // Whoever subscribes later gets the retained availability.
    let late = Subscriber::connect(broker.port, "fer-edge/seq/availability");
    let retained = late.next_on("fer-edge/seq/availability");
    assert_eq!(retained.text(), "online");
    assert!(retained.retain, "availability must be retained");
    let events: Vec<_> = subscriber
        .take_on("fer-edge/seq/events", 3)
        .iter()
        .map(event)
        .collect();
    assert_eq!(
        events,
        [
            ("new".into(), 1, "happiness".into()),
            ("update".into(), 1, "neutral".into()),
            ("end".into(), 1, "neutral".into()),
        ]
    );
    // Scraped while the sequence plays (the face has come and gone).
    let (code, health) = http_get(http, "/healthz").expect("the HTTP listener");
    assert_eq!((code, health.as_str()), (200, "ok\n"));
    let (code, text) = http_get(http, "/metrics").unwrap();
    assert_eq!(code, 200);
    let metrics = parse_exposition(&text);
    assert_eq!(metrics["fer_edge_faces_total"], 1.0, "{text}");
    assert_eq!(
        metrics["fer_edge_expressions_total{expression=\"neutral\"}"],
        1.0
    );
    assert_eq!(metrics["fer_edge_mqtt_connected"], 1.0, "{text}");
    assert_eq!(metrics["fer_edge_source_open"], 1.0, "{text}");
    let frames = metrics["fer_edge_frames_total"];
    assert!(frames > 1.0, "{text}");
    assert_eq!(
        metrics["fer_edge_inference_seconds_count"], frames,
        "{text}"
    );
    assert_eq!(
        metrics["fer_edge_inference_seconds_bucket{le=\"+Inf\"}"],
        frames
    );
    // The file source ends: the service stops by itself, cleanly.
    let offline = subscriber.next_on("fer-edge/seq/availability");
    assert_eq!(offline.text(), "offline");
    assert!(service.wait().success());

    let status = service.status();
    assert_eq!(status["state"], "stopped");
    // Every frame was processed, or dropped for a newer one when the
    // machine was too slow for 5 fps.
    let frames = status["stats"]["frames"].as_u64().unwrap();
    let dropped = status["stats"]["dropped_frames"].as_u64().unwrap();
    assert_eq!(frames + dropped, SEQUENCE_FRAMES, "{status}");
    assert_eq!(status["stats"]["faces"], 1);
    assert_eq!(status["stats"]["expressions"]["neutral"], 1);
    assert_eq!(status["stats"]["sink_dropped"]["mqtt"], 0);

    let told = notifications(&notify);
    assert!(told.iter().any(|m| m.contains("READY=1")), "{told:?}");
    assert!(told.iter().any(|m| m.contains("WATCHDOG=1")), "{told:?}");
    assert!(told.last().unwrap().contains("STOPPING=1"), "{told:?}");
}

#[test]
fn sigterm_ends_the_tracks_and_publishes_offline_and_kill_leaves_the_last_will() {
    require_native_and_mosquitto!();
    let broker = Broker::start();
    let subscriber = Subscriber::connect(broker.port, "fer-edge/stop/#");

    // SIGTERM while a face is on screen: its `end`, then `offline`, exit 0.
    let mut service = Service::start(broker.port, "stop", &["capture.repeat=true"]);
    let events = subscriber.take_on("fer-edge/stop/events", 1);
    assert_eq!(event(&events[0]).0, "new");
    service.signal("-TERM");
    assert_eq!(event(&subscriber.next_on("fer-edge/stop/events")).0, "end");
    assert_eq!(
        subscriber.next_on("fer-edge/stop/availability").text(),
        "offline"
    );
    assert!(service.wait().success());
    assert_eq!(service.status()["state"], "stopped");

    // SIGKILL: no goodbye; the broker publishes the last will (`offline`)
    // once 1.5 keep-alives (3 s) pass without a word from the device.
    let mut service = Service::start(broker.port, "stop", &["capture.repeat=true"]);
    let online = subscriber.next_on("fer-edge/stop/availability");
    assert_eq!(online.text(), "online");
    subscriber.take_on("fer-edge/stop/events", 1);
    service.signal("-KILL");
    service.wait();
    let killed_at = Instant::now();
    let will = subscriber.next_on("fer-edge/stop/availability");
    assert_eq!(will.text(), "offline");
    assert!(killed_at.elapsed() < Duration::from_secs(10));
}

/// A missing camera keeps the service up (it is retried), and `/healthz`
/// says 503 with why, so a fleet dashboard shows the kiosk as down.
#[test]
fn a_missing_camera_makes_healthz_fail() {
    require_native_and_mosquitto!();
    let broker = Broker::start();
    let http = free_port();
    let listen = format!("http.listen=127.0.0.1:{http}");
    let mut service = Service::start(
        broker.port,
        "nocam",
        &[
            &listen,
            "capture.source=v4l2",
            "capture.device=/dev/video-fer-edge-missing",
        ],
    );
    wait_until("the HTTP listener", || http_get(http, "/healthz").is_some());
    let (code, why) = http_get(http, "/healthz").unwrap();
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("not open"), "{why}");
    let metrics = parse_exposition(&http_get(http, "/metrics").unwrap().1);
    assert_eq!(metrics["fer_edge_source_open"], 0.0);
    assert_eq!(metrics["fer_edge_frames_total"], 0.0);
    service.signal("-TERM");
    assert!(service.wait().success());
}

#[test]
fn no_event_is_lost_across_a_broker_restart() {
    require_native_and_mosquitto!();
    let mut broker = Broker::start();
    // A persistent session: the broker keeps the subscription and queues
    // what arrives for it while the subscriber is away.
    let subscriber = Subscriber::connect_with(broker.port, "fer-edge/restart/events", |options| {
        options.set_clean_session(false);
    });
    let mut service = Service::start(broker.port, "restart", &["capture.repeat=true"]);

    // The sequence loops: every pass is one face's new, update and end.
    let before = subscriber.take_on("fer-edge/restart/events", 2);
    broker.stop();
    // Most of a pass (7.6 s) with the broker down: its events wait in the buffer.
    std::thread::sleep(Duration::from_secs(5));
    broker.restart();
    let after = subscriber.take_on("fer-edge/restart/events", 7);
    service.signal("-TERM");
    assert!(service.wait().success());

    let events: Vec<_> = before.iter().chain(&after).map(event).collect();
    let kinds = ["new", "update", "end"];
    for (i, (kind, id, _)) in events.iter().enumerate() {
        assert_eq!(kind, kinds[i % 3], "event {i} of {events:?}");
        assert_eq!(*id, 1 + i as u64 / 3, "event {i} of {events:?}");
    }
    assert_eq!(service.status()["stats"]["sink_dropped"]["mqtt"], 0);
}
