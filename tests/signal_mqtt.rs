//! The MQTT sink against a real mosquitto broker that each test starts on a
//! free loopback port (and stops): topics and payloads of a tracked face,
//! the same lines in the JSON log, retained availability with the last will,
//! buffering across a broker restart or stall with every lost message
//! counted, the newest retained state last after an outage, what shutdown
//! says and counts, Home Assistant discovery, and TLS with a client
//! certificate and a password (and no password in clear text). Skipped,
//! loudly, without mosquitto.

use fer_edge::face::{Expression, ExpressionScores, Face};
use fer_edge::signal::{JsonLogSink, MessageBuilder, MqttConfig, MqttSink, Sink, Stats, TlsConfig};
use fer_edge::track::{TrackEvent, Tracker, TrackerConfig};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[path = "common/broker.rs"]
mod broker;
mod common;
use broker::*;
use common::command_for;

fn sink_config(port: u16, device: &str) -> MqttConfig {
    MqttConfig {
        enabled: true,
        host: "127.0.0.1".into(),
        port: Some(port),
        device_id: Some(device.into()),
        keep_alive_s: 5,
        reconnect_max_ms: 500,
        ..Default::default()
    }
}

fn stats(frames: u64) -> Stats {
    Stats {
        frames,
        ..Default::default()
    }
}

/// Warnings and errors logged so far (by every test of this binary) that
/// mention `needle`, e.g. a test's own broker address. The first call
/// installs the logger.
fn logged(needle: &str) -> Vec<String> {
    struct Recorder(Mutex<Vec<String>>);
    impl log::Log for Recorder {
        fn enabled(&self, metadata: &log::Metadata) -> bool {
            metadata.level() <= log::Level::Warn
        }
        fn log(&self, record: &log::Record) {
            if self.enabled(record.metadata()) {
                self.0.lock().unwrap().push(record.args().to_string());
            }
        }
        fn flush(&self) {}
    }
    static RECORDER: OnceLock<&'static Recorder> = OnceLock::new();
    let recorder = RECORDER.get_or_init(|| {
        let recorder = Box::leak(Box::new(Recorder(Mutex::new(Vec::new()))));
        log::set_logger(recorder).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
        recorder
    });
    let lines = recorder.0.lock().unwrap();
    lines
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// The one logged line about `broker` that contains `what`.
fn logged_line(broker: &str, what: &str) -> String {
    let lines: Vec<String> = logged(broker)
        .into_iter()
        .filter(|l| l.contains(what))
        .collect();
    assert_eq!(lines.len(), 1, "{what:?} about {broker}: {lines:#?}");
    lines[0].clone()
}

fn frames_of(messages: &[Received]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m.json()["frames"].as_u64().unwrap())
        .collect()
}

/// A face at `x` showing `expression` with score `p`.
fn face(x: f32, expression: Expression, p: f32) -> Face {
    let mut scores = [(1.0 - p) / 6.0; 7];
    scores[expression.index()] = p;
    Face {
        bbox: [x, 10.0, x + 50.0, 70.0],
        expression,
        score: p,
        scores: ExpressionScores(scores),
    }
}

/// The tracker's events, frame by frame, for a face that is happy, then
/// surprised, then gone: new -> update -> end.
fn tracked_face_frames() -> Vec<Vec<TrackEvent>> {
    let mut frames: Vec<Vec<Face>> = (0..10)
        .map(|i| vec![face(100.0 + i as f32, Expression::Happiness, 0.8)])
        .collect();
    frames.extend((0..10).map(|i| vec![face(110.0 + i as f32, Expression::Surprise, 0.8)]));
    frames.extend((0..15).map(|_| vec![]));
    let mut tracker = Tracker::new(TrackerConfig::default());
    frames
        .iter()
        .enumerate()
        .map(|(i, faces)| tracker.update(faces, i as f64 * 0.1))
        .collect()
}

/// A `Write` whose bytes the test can read while a sink owns it.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A message as (topic, payload) the way the JSON log prints it: plain-text
/// payloads (availability) as JSON strings.
fn as_log_line(message: &Received) -> (String, Value) {
    let payload =
        serde_json::from_slice(&message.payload).unwrap_or_else(|_| Value::from(message.text()));
    (message.topic.clone(), payload)
}

#[test]
fn a_tracked_face_is_published_and_logged_alike() {
    require_mosquitto!();
    let broker = Broker::start();
    let config = sink_config(broker.port, "kiosk-a");
    let topics = config.topics().unwrap();
    let subscriber = Subscriber::connect(broker.port, "fer-edge/kiosk-a/#");
    let availability = Subscriber::connect(broker.port, &topics.availability());
    let log_output = SharedBuffer::default();
    let mut log = JsonLogSink::new(topics.clone(), log_output.clone());
    let mut mqtt = MqttSink::start(&config).unwrap();
    wait_until("the sink is connected", || mqtt.is_connected());
    // Connected is not yet published: once a subscriber has "online", the broker
    // holds it, and a later subscriber gets it as a retained message (under load,
    // subscribing first got it live, without the retain flag).
    availability.next_on(&topics.availability());

    let late_subscriber = Subscriber::connect(broker.port, &topics.availability());
    let retained = late_subscriber.next_on(&topics.availability());
    assert!(retained.retain, "availability is retained");
    assert_eq!(retained.text(), "online");

    let frames = tracked_face_frames();
    for events in &frames {
        mqtt.events(events, Instant::now());
        log.events(events, Instant::now());
    }
    mqtt.shutdown();
    log.shutdown();

    // online, state, 3 x (event, state), offline
    let published = subscriber.take(9);
    let tracked: Vec<&TrackEvent> = frames.iter().flatten().collect();
    let events: Vec<&Received> = published
        .iter()
        .filter(|m| m.topic == topics.events())
        .collect();
    assert_eq!(events.len(), 3);
    for (message, event) in events.iter().zip(&tracked) {
        let event_json: Value =
            serde_json::from_str(&serde_json::to_string(event).unwrap()).unwrap();
        assert_eq!(message.json(), event_json);
    }
    let kinds: Vec<Value> = events.iter().map(|m| m.json()["type"].clone()).collect();
    assert_eq!(kinds, ["new", "update", "end"]);
    let states: Vec<Value> = published
        .iter()
        .filter(|m| m.topic == topics.state())
        .map(|m| m.json()["expression"].clone())
        .collect();
    assert_eq!(states, ["none", "happiness", "surprise", "none"]);
    assert_eq!(published[0].text(), "online");
    assert_eq!(published[8].text(), "offline");
    assert_eq!(mqtt.dropped(), 0);

    let after = Subscriber::connect(broker.port, &topics.availability());
    let retained = after.next_on(&topics.availability());
    assert!(retained.retain && retained.text() == "offline");

    // The log printed the same messages, one JSON line each.
    let text = String::from_utf8(log_output.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<(String, Value)> = text
        .lines()
        .map(|line| {
            let line: Value = serde_json::from_str(line).unwrap();
            (
                line["topic"].as_str().unwrap().to_string(),
                line["payload"].clone(),
            )
        })
        .collect();
    let expected: Vec<(String, Value)> = published.iter().map(as_log_line).collect();
    assert_eq!(lines, expected);
}

/// Runs this test binary's `publisher_child` in a new process. Under
/// qemu-user (the aarch64 tests on an x86_64 host, where the kernel cannot
/// exec the binary itself) it goes through the test runner, or plain qemu.
fn spawn_publisher_child(port: u16, device: &str) -> Child {
    command_for(&std::env::current_exe().unwrap())
        .args(["--exact", "publisher_child", "--ignored", "--nocapture"])
        .env("FER_EDGE_TEST_CHILD_BROKER", format!("{port}/{device}"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Not a test on its own: the publisher process that
/// `the_last_will_marks_a_killed_publisher_offline` kills.
#[test]
#[ignore]
fn publisher_child() {
    let Ok(broker) = std::env::var("FER_EDGE_TEST_CHILD_BROKER") else {
        return;
    };
    let (port, device) = broker.split_once('/').unwrap();
    let _sink = MqttSink::start(&sink_config(port.parse().unwrap(), device)).unwrap();
    // Waits to be killed; ends by itself if nobody does.
    std::thread::sleep(Duration::from_secs(120));
    std::process::exit(1);
}

#[test]
fn the_last_will_marks_a_killed_publisher_offline() {
    require_mosquitto!();
    let broker = Broker::start();
    let topics = sink_config(broker.port, "kiosk-will").topics().unwrap();
    let subscriber = Subscriber::connect(broker.port, &topics.availability());
    let mut child = spawn_publisher_child(broker.port, "kiosk-will");
    assert_eq!(subscriber.next_on(&topics.availability()).text(), "online");
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(subscriber.next_on(&topics.availability()).text(), "offline");
    let after = Subscriber::connect(broker.port, &topics.availability());
    let retained = after.next_on(&topics.availability());
    assert!(retained.retain && retained.text() == "offline");
}

/// A subscriber whose session the broker keeps (and saves when stopped), so
/// nothing published while it reconnects is lost to it.
fn persistent_subscriber(port: u16, filter: &str) -> Subscriber {
    Subscriber::connect_with(port, filter, |options| {
        options.set_clean_session(false);
    })
}

#[test]
fn messages_buffered_while_the_broker_is_down_arrive_in_order_after_restart() {
    require_mosquitto!();
    let mut broker = Broker::start();
    let config = MqttConfig {
        buffer: 20,
        ..sink_config(broker.port, "kiosk-restart")
    };
    let topics = config.topics().unwrap();
    let subscriber = persistent_subscriber(broker.port, &topics.stats());
    let mut sink = MqttSink::start(&config).unwrap();
    wait_until("the sink is connected", || sink.is_connected());
    for frames in 0..3 {
        sink.stats(&stats(frames));
    }
    assert_eq!(
        frames_of(&subscriber.take_on(&topics.stats(), 3)),
        [0, 1, 2]
    );

    assert_eq!(sink.link().unwrap().last_error, None);

    broker.stop();
    wait_until("the sink noticed", || !sink.is_connected());
    let error = sink
        .link()
        .unwrap()
        .last_error
        .expect("the error of the lost connection");
    assert!(!error.is_empty());
    for frames in 3..13 {
        sink.stats(&stats(frames));
    }
    assert_eq!(sink.buffered(), 10);
    broker.restart();

    let delivered = subscriber.take_on(&topics.stats(), 10);
    assert_eq!(frames_of(&delivered), (3..13).collect::<Vec<_>>());
    wait_until("all acknowledged", || sink.buffered() == 0);
    assert_eq!(
        sink.link().unwrap().last_error,
        None,
        "cleared on connecting"
    );
    assert!(subscriber
        .rest_on(&topics.stats(), Duration::from_millis(300))
        .is_empty());
    assert_eq!(sink.dropped(), 0);
}

#[test]
fn beyond_the_buffer_the_oldest_are_dropped_and_counted() {
    require_mosquitto!();
    let mut broker = Broker::start();
    let config = MqttConfig {
        buffer: 5,
        ..sink_config(broker.port, "kiosk-overflow")
    };
    let topics = config.topics().unwrap();
    let subscriber = persistent_subscriber(broker.port, &topics.stats());
    let mut sink = MqttSink::start(&config).unwrap();
    wait_until("the sink is connected", || sink.is_connected());

    broker.stop();
    wait_until("the sink noticed", || !sink.is_connected());
    for frames in 0..8 {
        sink.stats(&stats(frames));
    }
    assert_eq!(sink.dropped(), 3);
    broker.restart();

    let delivered = subscriber.take_on(&topics.stats(), 5);
    assert_eq!(frames_of(&delivered), [3, 4, 5, 6, 7]);
    // Publishing what was dropped also goes out with the next stats.
    let mut next = stats(8);
    next.sink_dropped = [("mqtt".to_string(), sink.dropped())].into();
    sink.stats(&next);
    assert_eq!(
        subscriber.next_on(&topics.stats()).json()["sink_dropped"]["mqtt"],
        3
    );
}

/// The distinct `frames` of the stats that reach `subscriber` until it has
/// been quiet for a second (QoS 1 may deliver one twice).
fn distinct_frames(subscriber: &Subscriber, topic: &str) -> BTreeSet<u64> {
    frames_of(&subscriber.rest_on(topic, Duration::from_secs(1)))
        .into_iter()
        .collect()
}

#[test]
fn every_message_is_received_or_counted_as_dropped_across_outages() {
    require_mosquitto!();
    let mut broker = Broker::start();
    let address = format!("127.0.0.1:{}", broker.port);
    logged(&address);
    let config = MqttConfig {
        buffer: 5,
        ..sink_config(broker.port, "kiosk-exact")
    };
    let topics = config.topics().unwrap();
    let subscriber = persistent_subscriber(broker.port, &topics.stats());
    let mut sink = MqttSink::start(&config).unwrap();
    wait_until("the sink is connected", || sink.is_connected());

    // A hung broker, for less than the keep-alive: the connection stays up
    // while far more than the buffer goes out. What the client wrote or
    // holds may arrive; only the oldest of the rest is dropped.
    broker.pause();
    for frames in 0..150 {
        sink.stats(&stats(frames));
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(sink.is_connected());
    let stalled_drops = sink.dropped();
    assert!(stalled_drops > 0, "150 messages fit in a buffer of 5?");
    logged_line(&address, "does not acknowledge");
    broker.resume();
    wait_until("all acknowledged", || sink.buffered() == 0);

    // A broker gone, then back; more messages right after the reconnect,
    // while the buffered ones are still in flight.
    broker.stop();
    wait_until("the sink noticed", || !sink.is_connected());
    for frames in 150..170 {
        sink.stats(&stats(frames));
    }
    assert_eq!(sink.dropped(), stalled_drops + 15);
    logged_line(&address, "is unreachable");
    broker.restart();
    wait_until("the sink is connected", || sink.is_connected());
    for frames in 170..190 {
        sink.stats(&stats(frames));
    }
    wait_until("all acknowledged", || sink.buffered() == 0);

    let received = distinct_frames(&subscriber, &topics.stats());
    assert_eq!(
        received.len() as u64 + sink.dropped(),
        190,
        "{} received, {} counted as dropped",
        received.len(),
        sink.dropped()
    );
}

#[test]
fn after_an_outage_the_newest_state_is_the_last_one_sent() {
    require_mosquitto!();
    let mut broker = Broker::start();
    let config = sink_config(broker.port, "kiosk-state");
    let topics = config.topics().unwrap();
    let subscriber = persistent_subscriber(broker.port, &topics.state());
    let mut sink = MqttSink::start(&config).unwrap();
    wait_until("the sink is connected", || sink.is_connected());
    assert_eq!(
        subscriber.next_on(&topics.state()).json()["face_present"],
        false
    );

    broker.stop();
    wait_until("the sink noticed", || !sink.is_connected());
    // A face, happy then surprised, while the broker is away.
    let mut expected = MessageBuilder::new(topics.clone());
    let mut changes = 0;
    for events in &tracked_face_frames()[..20] {
        sink.events(events, Instant::now());
        changes += expected
            .events(events)
            .iter()
            .filter(|m| m.topic == topics.state())
            .count();
    }
    assert!(changes >= 2, "{changes} state changes");
    let newest = expected.state().payload;
    assert_eq!(newest["expression"], "surprise");
    broker.restart();
    wait_until("all delivered", || {
        sink.is_connected() && sink.buffered() == 0
    });

    let states: Vec<Value> = subscriber
        .rest_on(&topics.state(), Duration::from_millis(500))
        .iter()
        .map(Received::json)
        .collect();
    assert_eq!(
        states,
        std::slice::from_ref(&newest),
        "no older state after the newest"
    );
    let retained = Subscriber::connect(broker.port, &topics.state()).next_on(&topics.state());
    assert!(retained.retain);
    assert_eq!(retained.json(), newest);
}

#[test]
fn at_shutdown_without_ever_connecting_all_is_counted_and_no_last_will_promised() {
    let port = free_port(); // nothing listens there
    let address = format!("127.0.0.1:{port}");
    logged(&address);
    let mut sink = MqttSink::start(&MqttConfig {
        shutdown_timeout_ms: 200,
        ..sink_config(port, "kiosk-never")
    })
    .unwrap();
    for frames in 0..3 {
        sink.stats(&stats(frames));
    }
    sink.shutdown();
    assert_eq!(sink.dropped(), 4, "3 stats and `offline`");
    let line = logged_line(&address, "at shutdown");
    assert!(line.contains("4 messages not delivered"), "{line}");
    assert!(line.contains("never connected"), "{line}");
    assert!(line.contains("no last will"), "{line}");
}

#[test]
fn at_shutdown_after_losing_the_broker_what_is_left_is_counted() {
    require_mosquitto!();
    let mut broker = Broker::start();
    let address = format!("127.0.0.1:{}", broker.port);
    logged(&address);
    let config = MqttConfig {
        shutdown_timeout_ms: 200,
        ..sink_config(broker.port, "kiosk-lost")
    };
    let topics = config.topics().unwrap();
    let subscriber = persistent_subscriber(broker.port, &topics.stats());
    let mut sink = MqttSink::start(&config).unwrap();
    wait_until("the sink is connected", || sink.is_connected());
    for frames in 0..2 {
        sink.stats(&stats(frames));
    }
    assert_eq!(frames_of(&subscriber.take_on(&topics.stats(), 2)), [0, 1]);
    broker.stop();
    wait_until("the sink noticed", || !sink.is_connected());
    for frames in 2..5 {
        sink.stats(&stats(frames));
    }
    sink.shutdown();
    assert_eq!(sink.dropped(), 4, "3 stats and `offline`");
    let line = logged_line(&address, "at shutdown");
    assert!(line.contains("4 messages not delivered"), "{line}");
    assert!(line.contains("was lost"), "{line}");
    assert!(line.contains("last will"), "{line}");

    broker.restart();
    assert!(distinct_frames(&subscriber, &topics.stats()).is_empty());
}

#[test]
fn at_shutdown_with_a_hung_broker_the_unacknowledged_are_counted() {
    require_mosquitto!();
    let broker = Broker::start();
    let address = format!("127.0.0.1:{}", broker.port);
    logged(&address);
    let mut sink = MqttSink::start(&MqttConfig {
        shutdown_timeout_ms: 200,
        ..sink_config(broker.port, "kiosk-hung")
    })
    .unwrap();
    wait_until("the sink is connected", || sink.is_connected());
    broker.pause();
    for frames in 0..3 {
        sink.stats(&stats(frames));
    }
    sink.shutdown();
    broker.resume();
    assert_eq!(sink.dropped(), 4, "3 stats and `offline`");
    let line = logged_line(&address, "at shutdown");
    assert!(
        line.contains("did not acknowledge them within 200 ms"),
        "{line}"
    );
    assert!(line.contains("last will"), "{line}");
}

#[test]
fn home_assistant_discovery_configs_are_retained_json() {
    require_mosquitto!();
    let broker = Broker::start();
    let config = MqttConfig {
        homeassistant_discovery: true,
        ..sink_config(broker.port, "kiosk-ha")
    };
    let topics = config.topics().unwrap();
    let published = Subscriber::connect(broker.port, "homeassistant/#");
    let sink = MqttSink::start(&config).unwrap();
    wait_until("the sink is connected", || sink.is_connected());
    // Once a subscriber has all three, the broker holds them: subscribing after
    // that, only retained ones arrive (as the race-free check that they are).
    published.take(3);
    let subscriber = Subscriber::connect(broker.port, "homeassistant/#");
    let mut configs = subscriber.take(3);
    configs.sort_by(|a, b| a.topic.cmp(&b.topic));
    let names: Vec<&str> = configs.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(
        names,
        [
            "homeassistant/binary_sensor/kiosk-ha/face_present/config",
            "homeassistant/sensor/kiosk-ha/expression/config",
            "homeassistant/sensor/kiosk-ha/faces/config",
        ]
    );
    for message in &configs {
        assert!(message.retain, "{} is retained", message.topic);
        let config = message.json();
        assert_eq!(config["state_topic"], topics.state().as_str());
        assert_eq!(config["availability_topic"], topics.availability().as_str());
        assert_eq!(config["payload_available"], "online");
        assert!(config["unique_id"].as_str().unwrap().contains("kiosk-ha"));
        assert_eq!(config["device"]["identifiers"][0], "fer_edge_kiosk-ha");
    }
    // The state they read is retained too.
    let state = Subscriber::connect(broker.port, &topics.state()).next_on(&topics.state());
    assert!(state.retain);
    assert_eq!(state.json()["face_present"], false);
}

/// Writes a test CA, a server certificate for 127.0.0.1 and a client
/// certificate with `openssl`; false if openssl is missing.
fn make_certificates(dir: &TempDir) -> bool {
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|status| assert!(status.success(), "openssl {args:?}"))
            .is_ok()
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = [
        &["req", "-x509"][..],
        &key,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=fer-edge test CA",
        ],
    ]
    .concat();
    if !openssl(&ca) {
        return false;
    }
    // Extensions make version 3 certificates, which rustls requires.
    std::fs::write(
        dir.file("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    std::fs::write(dir.file("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "client"] {
        let key_file = format!("{name}.key");
        let request = format!("{name}.csr");
        let subject = format!("/CN=fer-edge test {name}");
        let csr = [
            &["req"][..],
            &key,
            &["-keyout", &key_file, "-out", &request, "-subj", &subject],
        ]
        .concat();
        openssl(&csr);
        let cert = format!("{name}.crt");
        let extensions = format!("{name}.ext");
        let sign = [
            "x509",
            "-req",
            "-in",
            &request,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &extensions,
        ];
        openssl(&sign);
    }
    true
}

#[test]
fn tls_with_a_client_certificate_and_a_password() {
    require_mosquitto!();
    let dir = TempDir::new();
    if !make_certificates(&dir) {
        common::skip("openssl is not installed");
        return;
    }
    let passwords = dir.file("passwords");
    let status = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["kiosk", "s3cret"])
        .status()
        .unwrap();
    assert!(status.success());
    let (plain_port, tls_port) = (free_port(), free_port());
    let path = |name: &str| dir.file(name).display().to_string();
    let extra = format!(
        "allow_anonymous false\npassword_file {passwords}\n\
         listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
         require_certificate true\n",
        passwords = passwords.display(),
        ca = path("ca.crt"),
        cert = path("server.crt"),
        key = path("server.key"),
    );
    let broker = Broker::start_with(plain_port, dir, &extra);
    let config = MqttConfig {
        port: Some(tls_port),
        username: Some("kiosk".into()),
        password: Some("s3cret".into()),
        tls: Some(TlsConfig {
            ca_file: broker.dir.file("ca.crt"),
            client_cert: Some(broker.dir.file("client.crt")),
            client_key: Some(broker.dir.file("client.key")),
        }),
        ..sink_config(0, "kiosk-tls")
    };
    let topics = config.topics().unwrap();
    // The test listens on the plain listener, with the same password.
    let subscriber = Subscriber::connect_with(broker.port, &topics.stats(), |options| {
        options.set_credentials("kiosk", "s3cret");
    });
    let mut sink = MqttSink::start(&config).unwrap();
    wait_until("the sink is connected over TLS", || sink.is_connected());
    sink.stats(&stats(42));
    assert_eq!(frames_of(&[subscriber.next_on(&topics.stats())]), [42]);

    // A wrong password: the sink keeps running, buffering, and says why
    // (connection refused), never connected.
    let mut refused = MqttSink::start(&MqttConfig {
        password: Some("wrong".into()),
        device_id: Some("kiosk-tls-2".into()),
        ..config.clone()
    })
    .unwrap();
    refused.stats(&stats(1));
    let error = wait_for_error(&refused);
    assert!(error.contains("refused"), "{error}");
    assert!(!error.contains("TLS listener"), "{error}");
    assert!(!refused.is_connected());
    assert_eq!(refused.buffered(), 1);

    // Without [mqtt.tls] at the TLS port: the likely cause is named.
    let plain = MqttSink::start(&MqttConfig {
        username: None,
        password: None,
        tls: None,
        device_id: Some("kiosk-tls-3".into()),
        ..config.clone()
    })
    .unwrap();
    let error = wait_for_error(&plain);
    let hint = format!("is port {tls_port} a TLS listener? set [mqtt.tls]");
    assert!(error.contains(&hint), "{error}");

    // The password in clear text, to the plain listener: refused unless
    // the config accepts it, and then said once at start.
    let clear = MqttConfig {
        port: Some(plain_port),
        tls: None,
        device_id: Some("kiosk-tls-4".into()),
        ..config
    };
    let error = MqttSink::start(&clear).err().unwrap().to_string();
    assert!(error.contains("allow_insecure_auth = true"), "{error}");
    let address = format!("127.0.0.1:{plain_port}");
    logged(&address);
    let insecure = MqttSink::start(&MqttConfig {
        allow_insecure_auth: true,
        ..clear
    })
    .unwrap();
    wait_until("the sink is connected in clear text", || {
        insecure.is_connected()
    });
    logged_line(&address, "clear text");
}

/// The sink's first connection error, waited for.
fn wait_for_error(sink: &MqttSink) -> String {
    wait_until("a connection error", || {
        sink.link().unwrap().last_error.is_some()
    });
    sink.link().unwrap().last_error.unwrap()
}
