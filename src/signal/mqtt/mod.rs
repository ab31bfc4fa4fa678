//! MQTT sink (rumqttc): the topics of [`super::message`] on a broker, with a
//! retained availability topic and last will, optional TLS, credentials and
//! Home Assistant discovery.
//!
//! The frame loop never waits for the network: it puts messages into a
//! bounded outbox and hands them to the client without blocking. A thread
//! of its own runs the connection (a current-thread tokio runtime),
//! reconnects with exponential backoff, and on every connection republishes
//! `online`, the discovery configs and the state, then every buffered message
//! the broker has not acknowledged, in order.

mod outbox;
mod tls;

pub use tls::TlsError;

use super::message::{Message, MessageBuilder, TopicError, Topics};
use super::{LinkState, Sink, Stats};
use crate::track::TrackEvent;
use outbox::Outbox;
use rumqttc::{
    AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The `[mqtt]` table.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Publish to an MQTT broker.
    pub enabled: bool,
    /// Broker host name or address.
    pub host: String,
    /// Broker port; default 1883, or 8883 with `tls`.
    pub port: Option<u16>,
    /// MQTT client id; default `fer-edge-<device_id>`.
    pub client_id: Option<String>,
    /// First topic levels, e.g. `fer-edge` or `site/fer-edge`.
    pub prefix: String,
    /// This device's topic level and Home Assistant node id (letters, digits,
    /// `_`, `-`); default the host name.
    pub device_id: Option<String>,
    /// User name for the broker.
    pub username: Option<String>,
    /// Password for the broker (needs `username`).
    pub password: Option<String>,
    /// Connect with TLS (`[mqtt.tls]`).
    pub tls: Option<TlsConfig>,
    /// QoS of every publish: 0, 1 or 2.
    pub qos: u8,
    /// Seconds between keep-alive pings; the broker publishes the last will
    /// (`offline`) after 1.5 times this without hearing from the device.
    pub keep_alive_s: u16,
    /// Messages kept while the broker is unreachable; beyond this the oldest
    /// are dropped (and counted).
    pub buffer: usize,
    /// Longest wait between reconnection attempts, milliseconds (the wait
    /// doubles from 250 ms up to this).
    pub reconnect_max_ms: u64,
    /// At shutdown, how long to wait for buffered messages and `offline` to
    /// be acknowledged, milliseconds.
    pub shutdown_timeout_ms: u64,
    /// Publish Home Assistant MQTT discovery configs (retained).
    pub homeassistant_discovery: bool,
    /// Topic prefix Home Assistant watches for discovery.
    pub discovery_prefix: String,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            enabled: false,
            host: "localhost".into(),
            port: None,
            client_id: None,
            prefix: "fer-edge".into(),
            device_id: None,
            username: None,
            password: None,
            tls: None,
            qos: 1,
            keep_alive_s: 30,
            buffer: 1000,
            reconnect_max_ms: 30_000,
            shutdown_timeout_ms: 2_000,
            homeassistant_discovery: false,
            discovery_prefix: "homeassistant".into(),
        }
    }
}

/// The `[mqtt.tls]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of the CA certificates to trust (the system bundle trusts
    /// the public CAs).
    pub ca_file: PathBuf,
    /// PEM client certificate chain, for brokers that require one.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_file: "/etc/ssl/certs/ca-certificates.crt".into(),
            client_cert: None,
            client_key: None,
        }
    }
}

/// Why the MQTT sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("qos must be 0, 1 or 2, not {0}")]
    InvalidQos(u8),
    #[error("buffer must hold at least one message")]
    EmptyBuffer,
    #[error("a password needs a username")]
    PasswordWithoutUsername,
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot start the MQTT connection thread: {0}")]
    Thread(#[source] std::io::Error),
}

impl MqttConfig {
    /// This device's id: `device_id`, or the host name made topic-safe.
    pub fn device_id(&self) -> String {
        self.device_id.clone().unwrap_or_else(|| {
            let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            let short = hostname.trim().split('.').next().unwrap_or_default();
            let safe: String = short
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if safe.is_empty() {
                "fer-edge".into()
            } else {
                safe
            }
        })
    }

    /// The topics of this device (without discovery).
    pub fn topics(&self) -> Result<Topics, MqttError> {
        Ok(Topics::new(&self.prefix, &self.device_id())?)
    }

    /// Checks everything [`MqttSink::start`] checks (topics, QoS, buffer,
    /// credentials, TLS files), without connecting.
    pub fn check(&self) -> Result<(), MqttError> {
        self.prepare().map(drop)
    }

    /// Topics, QoS and client options of this config, checked.
    fn prepare(&self) -> Result<(Topics, QoS, MqttOptions), MqttError> {
        let mut topics = self.topics()?;
        if self.homeassistant_discovery {
            topics = topics.with_discovery(&self.discovery_prefix)?;
        }
        if self.buffer == 0 {
            return Err(MqttError::EmptyBuffer);
        }
        let qos = self.qos()?;
        let options = self.client_options(&topics, qos)?;
        Ok((topics, qos, options))
    }

    fn qos(&self) -> Result<QoS, MqttError> {
        match self.qos {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            other => Err(MqttError::InvalidQos(other)),
        }
    }

    /// Client options: identity, keep-alive, last will, credentials, TLS.
    fn client_options(&self, topics: &Topics, qos: QoS) -> Result<MqttOptions, MqttError> {
        let default_port = if self.tls.is_some() { 8883 } else { 1883 };
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("fer-edge-{}", topics.device_id()));
        let mut options =
            MqttOptions::new(client_id, &self.host, self.port.unwrap_or(default_port));
        options
            .set_keep_alive(Duration::from_secs(self.keep_alive_s.into()))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
            .set_last_will(LastWill::new(
                topics.availability(),
                super::message::OFFLINE,
                qos,
                true,
            ));
        match (&self.username, &self.password) {
            (Some(username), password) => {
                options.set_credentials(username, password.clone().unwrap_or_default());
            }
            (None, Some(_)) => return Err(MqttError::PasswordWithoutUsername),
            (None, None) => {}
        }
        if let Some(tls) = &self.tls {
            let config = tls::client_config(tls)?;
            options.set_transport(Transport::Tls(TlsConfiguration::Rustls(config)));
        }
        Ok(options)
    }
}

/// Largest packet sent or accepted (discovery configs are the largest
/// messages, under 1 KiB).
const MAX_PACKET_BYTES: usize = 64 * 1024;
/// First wait before reconnecting; it doubles up to `reconnect_max_ms`.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(250);
/// Room in the client's request channel beyond the buffer, for the
/// messages of each connection and the disconnect.
const CHANNEL_EXTRA: usize = 16;
/// How long shutdown waits for the connection thread to end.
const THREAD_EXIT_TIMEOUT: Duration = Duration::from_secs(1);

/// What the frame loop and the connection thread share.
struct Link {
    outbox: Outbox,
    /// The current connection's client; none between connections.
    client: Option<AsyncClient>,
    qos: QoS,
    /// What each new connection publishes first.
    greeting: Vec<Message>,
    connected: bool,
}

impl Link {
    /// Hands `message` to the current client without waiting; false if
    /// there is none or its channel is full.
    fn sender(client: &Option<AsyncClient>, qos: QoS) -> impl FnMut(&Message) -> bool + '_ {
        move |message: &Message| {
            client.as_ref().is_some_and(|client| {
                client
                    .try_publish(
                        message.topic.clone(),
                        qos,
                        message.retain,
                        message.payload_bytes(),
                    )
                    .is_ok()
            })
        }
    }

    fn enqueue(&mut self, message: Message) {
        let first_drop = self
            .outbox
            .push(message, Link::sender(&self.client, self.qos));
        if first_drop {
            log::warn!(
                "MQTT: buffer full, dropping the oldest messages until the broker is reachable"
            );
        }
    }

    fn hand_over(&mut self) {
        self.outbox.hand_over(Link::sender(&self.client, self.qos));
    }

    fn on_connected(&mut self) {
        self.connected = true;
        self.outbox
            .on_connected(&self.greeting, Link::sender(&self.client, self.qos));
    }

    fn on_disconnected(&mut self) {
        self.connected = false;
        self.client = None;
        self.outbox.on_disconnected();
    }
}

struct Shared {
    link: Mutex<Link>,
    /// Signalled whenever the link changes (acks, connection state).
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Link> {
        // A panic elsewhere must not take the frame loop down with it.
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut Link)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }
}

/// Publishes to an MQTT broker from its own connection thread.
pub struct MqttSink {
    builder: MessageBuilder,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    shutdown_timeout: Duration,
}

impl MqttSink {
    /// Checks `config` and starts connecting in the background; returns at
    /// once, whether or not the broker is reachable.
    pub fn start(config: &MqttConfig) -> Result<Self, MqttError> {
        let (topics, qos, options) = config.prepare()?;
        let builder = MessageBuilder::new(topics);
        let shared = Arc::new(Shared {
            link: Mutex::new(Link {
                outbox: Outbox::new(config.buffer, qos),
                client: None,
                qos,
                greeting: builder.on_connect(),
                connected: false,
            }),
            changed: Condvar::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let connection = Connection {
            shared: Arc::clone(&shared),
            options,
            channel_capacity: config.buffer + CHANNEL_EXTRA,
            max_delay: Duration::from_millis(config.reconnect_max_ms).max(FIRST_RECONNECT_DELAY),
            stopped,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(MqttError::Thread)?;
        let thread = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || runtime.block_on(connection.run()))
            .map_err(MqttError::Thread)?;
        Ok(MqttSink {
            builder,
            shared,
            stop,
            thread: Some(thread),
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
        })
    }

    /// Whether the broker accepted the current connection.
    pub fn is_connected(&self) -> bool {
        self.link_state().connected
    }

    /// Messages waiting for the broker's acknowledgement.
    pub fn buffered(&self) -> usize {
        self.link_state().pending
    }

    fn link_state(&self) -> LinkState {
        let link = self.shared.lock();
        LinkState {
            connected: link.connected,
            pending: link.outbox.len(),
        }
    }
}

impl Sink for MqttSink {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn link(&self) -> Option<LinkState> {
        Some(self.link_state())
    }

    fn events(&mut self, events: &[TrackEvent], _now: Instant) {
        if events.is_empty() {
            return;
        }
        let messages = self.builder.events(events);
        let greeting = self.builder.on_connect();
        let mut link = self.shared.lock();
        link.greeting = greeting;
        for message in messages {
            link.enqueue(message);
        }
    }

    fn stats(&mut self, stats: &Stats) {
        let message = self.builder.stats(stats);
        self.shared.lock().enqueue(message);
    }

    /// Delivers what is buffered and `offline` within `shutdown_timeout_ms`
    /// and disconnects cleanly; if that does not work out, drops the
    /// connection without DISCONNECT so the broker publishes the last will.
    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + self.shutdown_timeout;
        let mut link = self.shared.lock();
        link.enqueue(self.builder.availability(false));
        while !link.outbox.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            link = self
                .shared
                .changed
                .wait_timeout(link, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let flushed = link.outbox.is_empty();
        let disconnecting = flushed
            && link
                .client
                .as_ref()
                .is_some_and(|client| client.try_disconnect().is_ok());
        if !flushed {
            log::warn!(
                "MQTT: {} messages not delivered at shutdown; the broker will publish `offline` \
                 as the last will",
                link.outbox.len()
            );
        }
        drop(link);
        if disconnecting {
            wait_until_finished(&thread, Instant::now() + THREAD_EXIT_TIMEOUT);
        }
        // Ends the thread if it did not disconnect: dropping the connection
        // without DISCONNECT makes the broker publish the last will.
        self.stop.send_replace(true);
        if wait_until_finished(&thread, Instant::now() + THREAD_EXIT_TIMEOUT) {
            if thread.join().is_err() {
                log::error!("MQTT: the connection thread panicked");
            }
        } else {
            log::warn!("MQTT: the connection thread did not stop; leaving it behind");
        }
    }

    fn dropped(&self) -> u64 {
        self.shared.lock().outbox.dropped()
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// True once `thread` has ended; false if `deadline` passed first.
fn wait_until_finished(thread: &JoinHandle<()>, deadline: Instant) -> bool {
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// The connection thread's state.
struct Connection {
    shared: Arc<Shared>,
    options: MqttOptions,
    channel_capacity: usize,
    max_delay: Duration,
    stopped: watch::Receiver<bool>,
}

impl Connection {
    /// Connects, reconnects and feeds acknowledgements to the outbox until
    /// the sink disconnects or stops it.
    async fn run(mut self) {
        let (host, port) = self.options.broker_address();
        let mut delay = FIRST_RECONNECT_DELAY;
        let mut failures = 0u32;
        loop {
            let (client, mut eventloop) =
                AsyncClient::new(self.options.clone(), self.channel_capacity);
            self.shared.update(|link| link.client = Some(client));
            let error = loop {
                let event = tokio::select! {
                    _ = self.stopped.wait_for(|&stop| stop) => return,
                    event = eventloop.poll() => event,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        log::info!("MQTT: connected to {host}:{port}");
                        failures = 0;
                        delay = FIRST_RECONNECT_DELAY;
                        self.shared.update(Link::on_connected);
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => self.acknowledged(ack.pkid),
                    Ok(Event::Incoming(Packet::PubComp(done))) => self.acknowledged(done.pkid),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        self.shared.update(|link| link.outbox.on_written(pkid));
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(error) => break error,
                }
            };
            drop(eventloop);
            self.shared.update(Link::on_disconnected);
            if failures == 0 {
                log::warn!("MQTT: {host}:{port}: {error}; buffering messages and reconnecting");
            } else {
                log::debug!("MQTT: {host}:{port}: {error} (attempt {failures})");
            }
            failures += 1;
            tokio::select! {
                _ = self.stopped.wait_for(|&stop| stop) => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(self.max_delay);
        }
    }

    fn acknowledged(&self, pkid: u16) {
        self.shared.update(|link| {
            link.outbox.on_acknowledged(pkid);
            link.hand_over();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_and_defaults() {
        let config: MqttConfig = toml::from_str(
            r#"
            enabled = true
            host = "broker.lan"
            device_id = "kiosk-3"
            homeassistant_discovery = true
            [tls]
            ca_file = "/etc/mosquitto/ca.crt"
            "#,
        )
        .unwrap();
        assert_eq!(config.qos, 1);
        assert_eq!(config.buffer, 1000);
        assert_eq!(config.device_id(), "kiosk-3");
        assert_eq!(
            config.tls.as_ref().unwrap().ca_file,
            PathBuf::from("/etc/mosquitto/ca.crt")
        );
        assert_eq!(
            config.topics().unwrap().availability(),
            "fer-edge/kiosk-3/availability"
        );
        for unknown in ["qso = 1", "[tls]\nca = \"x\""] {
            let error = toml::from_str::<MqttConfig>(unknown).unwrap_err();
            assert!(error.to_string().contains("unknown field"), "{error}");
        }
    }

    #[test]
    fn the_default_device_id_is_topic_safe() {
        let id = MqttConfig::default().device_id();
        assert!(Topics::new("fer-edge", &id).is_ok(), "{id:?}");
    }

    #[test]
    fn bad_settings_are_refused_before_connecting() {
        let refused = |config: MqttConfig| MqttSink::start(&config).err().unwrap().to_string();
        assert!(refused(MqttConfig {
            qos: 3,
            ..Default::default()
        })
        .contains("qos"));
        assert!(refused(MqttConfig {
            password: Some("secret".into()),
            ..Default::default()
        })
        .contains("username"));
        assert!(refused(MqttConfig {
            buffer: 0,
            ..Default::default()
        })
        .contains("buffer"));
        assert!(refused(MqttConfig {
            device_id: Some("kiosk 1".into()),
            ..Default::default()
        })
        .contains("device id"));
    }

    #[test]
    fn an_unreachable_broker_does_not_block_and_drops_the_oldest() {
        // Port 1 on loopback: nothing listens, connections are refused.
        let mut sink = MqttSink::start(&MqttConfig {
            port: Some(1),
            buffer: 2,
            shutdown_timeout_ms: 100,
            ..Default::default()
        })
        .unwrap();
        let started = Instant::now();
        for frames in 0..5 {
            sink.stats(&Stats {
                frames,
                ..Default::default()
            });
        }
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(!sink.is_connected());
        assert_eq!(sink.dropped(), 3);
        assert_eq!(sink.buffered(), 2);
        sink.shutdown();
        // `offline` pushed one more out.
        assert_eq!(sink.dropped(), 4);
    }
}
