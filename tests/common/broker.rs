//! Test harness shared by the MQTT tests: a real mosquitto broker on a free
//! loopback port, a subscribing client that collects what arrives, and
//! temporary directories. Each test crate uses part of it.
#![allow(dead_code)]

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// Generous waits: the tests also run under qemu on a busy 2-core machine.
pub const WAIT: Duration = Duration::from_secs(15);

/// Returns from the test, saying so on stderr, when mosquitto is missing.
#[macro_export]
macro_rules! require_mosquitto {
    () => {
        if !std::path::Path::new($crate::broker::MOSQUITTO).exists() {
            $crate::common::skip(&format!(
                "{} is not installed (apt-get install mosquitto)",
                $crate::broker::MOSQUITTO
            ));
            return;
        }
    };
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "fer-edge-signal-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mosquitto process with a config file of its own, persisting its state
/// in its directory across [`Broker::restart`].
pub struct Broker {
    pub child: Option<Child>,
    pub port: u16,
    pub config: PathBuf,
    pub dir: TempDir,
}

impl Broker {
    /// A broker with an anonymous plain listener on `port`, plus `extra`
    /// config lines.
    pub fn start_with(port: u16, dir: TempDir, extra: &str) -> Broker {
        let config = dir.file("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "user root\npersistence true\npersistence_location {dir}/\n\
                 log_dest file {dir}/mosquitto.log\n\
                 listener {port} 127.0.0.1\n{extra}\n",
                dir = dir.0.display()
            ),
        )
        .unwrap();
        let mut broker = Broker {
            child: None,
            port,
            config,
            dir,
        };
        broker.restart();
        broker
    }

    pub fn start() -> Broker {
        Broker::start_with(free_port(), TempDir::new(), "allow_anonymous true")
    }

    /// Starts mosquitto (again, on the same port) and waits until it listens.
    pub fn restart(&mut self) {
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops mosquitto gracefully (SIGTERM: it saves its sessions).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            child.wait().unwrap();
        }
    }

    /// Freezes mosquitto (SIGSTOP): connections stay open, nothing is
    /// read or answered, as with a hung broker or a cut cable.
    pub fn pause(&self) {
        signal(self.child.as_ref().unwrap(), "STOP");
    }

    /// Lets a paused mosquitto go on (SIGCONT).
    pub fn resume(&self) {
        signal(self.child.as_ref().unwrap(), "CONT");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.file("mosquitto.log")).unwrap_or_default()
    }
}

/// Sends `child` the signal `name` (as `kill -NAME`).
fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One publish a subscriber received.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap()
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.payload).unwrap()
    }
}

/// A rumqttc client in the test that subscribes to `filter` (again after
/// each reconnect unless its session persists) and collects what arrives.
pub struct Subscriber {
    pub client: Client,
    pub received: mpsc::Receiver<Received>,
}

impl Subscriber {
    pub fn connect(port: u16, filter: &str) -> Subscriber {
        Subscriber::connect_with(port, filter, |_| {})
    }

    pub fn connect_with(
        port: u16,
        filter: &str,
        setup: impl FnOnce(&mut MqttOptions),
    ) -> Subscriber {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "test-sub-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        setup(&mut options);
        let (client, mut connection) = Client::new(options, 100);
        let (sender, received) = mpsc::channel();
        let (subscribed_tx, subscribed) = mpsc::channel();
        let resubscriber = client.clone();
        let filter = filter.to_string();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) if !ack.session_present => {
                        resubscriber.subscribe(&filter, QoS::AtLeastOnce).unwrap();
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let received = Received {
                            topic: publish.topic.clone(),
                            payload: publish.payload.to_vec(),
                            retain: publish.retain,
                        };
                        if sender.send(received).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    // Broker down: retry, without spinning.
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
        subscribed
            .recv_timeout(WAIT)
            .expect("subscriber did not get its SUBACK");
        Subscriber { client, received }
    }

    /// The next message on `topic`, skipping others.
    pub fn next_on(&self, topic: &str) -> Received {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.received.recv_timeout(left) {
                Ok(received) if received.topic == topic => return received,
                Ok(_) => {}
                Err(_) => panic!("nothing on {topic} within {WAIT:?}"),
            }
        }
    }

    /// The next `count` messages on `topic`.
    pub fn take_on(&self, topic: &str, count: usize) -> Vec<Received> {
        (0..count).map(|_| self.next_on(topic)).collect()
    }

    /// The next `count` messages, whatever their topic.
    pub fn take(&self, count: usize) -> Vec<Received> {
        (0..count)
            .map(|_| {
                self.received
                    .recv_timeout(WAIT)
                    .unwrap_or_else(|_| panic!("fewer than {count} messages within {WAIT:?}"))
            })
            .collect()
    }

    /// Everything that arrives on `topic` within `quiet`.
    pub fn rest_on(&self, topic: &str, quiet: Duration) -> Vec<Received> {
        let mut rest = Vec::new();
        while let Ok(received) = self.received.recv_timeout(quiet) {
            if received.topic == topic {
                rest.push(received);
            }
        }
        rest
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
    }
}

pub fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
