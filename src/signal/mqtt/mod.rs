//! MQTT sink (rumqttc): the topics of [`super::message`] on a broker, with a
//! retained availability topic and last will, optional TLS, credentials and
//! Home Assistant discovery.
//!
//! The frame loop never waits for the network: it puts messages into a
//! bounded outbox and hands them to the client without blocking. A thread
//! of its own runs the connection (a current-thread tokio runtime),
//! reconnects with exponential backoff, and on every connection republishes
//! `online`, the discovery configs and the state, then every buffered message
//! the broker has not acknowledged, in order. What it cannot deliver it
//! counts in [`Sink::dropped`] (`outbox.rs` says how exactly).

mod outbox;
mod tls;

pub use tls::TlsError;

use super::message::{Message, MessageBuilder, TopicError, Topics};
use super::{LinkState, Sink, Stats};
use crate::config::{in_range, InvalidKey};
use crate::track::TrackEvent;
use outbox::Outbox;
use rumqttc::{
    AsyncClient, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, PubAck, PubComp,
    QoS, TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;
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
    /// Accept sending `username` and `password` in clear text, without
    /// `[mqtt.tls]` (refused otherwise).
    pub allow_insecure_auth: bool,
    /// Connect with TLS (`[mqtt.tls]`).
    pub tls: Option<TlsConfig>,
    /// QoS of every publish: 0, 1 or 2.
    pub qos: u8,
    /// Seconds between keep-alive pings; the broker publishes the last will
    /// (`offline`) after 1.5 times this without hearing from the device.
    pub keep_alive_s: u16,
    /// Messages kept waiting while the broker is unreachable or slow; beyond
    /// this the oldest waiting ones are dropped (and counted). Messages
    /// already sent stay until acknowledged, on top of these.
    pub buffer: usize,
    /// Longest wait between reconnection attempts, milliseconds (the wait
    /// doubles from 250 ms up to this).
    pub reconnect_max_ms: u64,
    /// At shutdown, how long to wait for buffered messages and `offline` to
    /// be acknowledged, milliseconds (at most [`MAX_SHUTDOWN_TIMEOUT_MS`]).
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
            allow_insecure_auth: false,
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
    #[error(transparent)]
    OutOfRange(#[from] InvalidKey),
    #[error("a password needs a username")]
    PasswordWithoutUsername,
    #[error(
        "username/password without [mqtt.tls] would cross the network in clear text: \
         set up [mqtt.tls], or set allow_insecure_auth = true to accept that"
    )]
    InsecureAuth,
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

    /// Checks everything [`MqttSink::start`] checks (topics, QoS, ranges,
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
        self.check_ranges()?;
        let qos = self.qos()?;
        let options = self.client_options(&topics, qos)?;
        Ok((topics, qos, options))
    }

    /// Refuses numbers outside the ranges this sink is built for.
    fn check_ranges(&self) -> Result<(), InvalidKey> {
        in_range("mqtt.keep_alive_s", self.keep_alive_s, KEEP_ALIVE_S)?;
        in_range("mqtt.buffer", self.buffer, BUFFER)?;
        in_range(
            "mqtt.reconnect_max_ms",
            self.reconnect_max_ms,
            RECONNECT_MAX_MS,
        )?;
        in_range(
            "mqtt.shutdown_timeout_ms",
            self.shutdown_timeout_ms,
            0..=MAX_SHUTDOWN_TIMEOUT_MS,
        )
    }

    /// True if credentials go to the broker in clear text (allowed by
    /// `allow_insecure_auth`).
    fn insecure_auth(&self) -> bool {
        self.username.is_some() && self.tls.is_none()
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
        if self.insecure_auth() && !self.allow_insecure_auth {
            return Err(MqttError::InsecureAuth);
        }
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

/// Longest `shutdown_timeout_ms`. The systemd unit (`systemd/fer-edge.service`)
/// kills the service 15 s after asking it to stop (`TimeoutStopSec=15s`);
/// the MQTT wait must leave room for the rest of the shutdown within that
/// (a stalled camera's read, up to `capture.frame_timeout_ms` <= 5 s; the
/// connection thread's exit, up to 2 s), or systemd cuts it off mid-way and
/// the last messages are lost uncounted.
pub const MAX_SHUTDOWN_TIMEOUT_MS: u64 = 7_000;
/// Accepted `keep_alive_s`: at least rumqttc's 1 s (0, no keep-alive, would
/// leave a silently dead link without last will), at most an hour.
const KEEP_ALIVE_S: RangeInclusive<u16> = 1..=3600;
/// Accepted `buffer`, in messages (each is a few hundred bytes).
const BUFFER: RangeInclusive<usize> = 1..=100_000;
/// Accepted `reconnect_max_ms`: from the first wait (less would mean
/// nothing) to ten minutes.
const RECONNECT_MAX_MS: RangeInclusive<u64> = FIRST_RECONNECT_DELAY.as_millis() as u64..=600_000;
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

/// How the connection to the broker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reach {
    /// Never connected: the broker has no last will of this device.
    Never,
    /// The broker accepted the current connection.
    Connected,
    /// Connected before, not now: the broker publishes the last will when
    /// it notices.
    Lost,
}

/// What the frame loop and the connection thread share.
struct Link {
    outbox: Outbox,
    /// The current connection's client; none between connections.
    client: Option<AsyncClient>,
    qos: QoS,
    /// What each new connection publishes first.
    greeting: Vec<Message>,
    reach: Reach,
    /// The last connection error; none since the last accepted connection.
    last_error: Option<String>,
    /// `host:port` of the broker, for the log.
    broker: String,
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
        self.warn_of_drops(first_drop);
    }

    /// Warns of the first drop since the connection came up or went down,
    /// saying why for the state it is in.
    fn warn_of_drops(&self, first_drop: bool) {
        if !first_drop {
            return;
        }
        let broker = &self.broker;
        if self.reach == Reach::Connected {
            log::warn!(
                "MQTT: {broker} does not acknowledge messages as fast as they come and the \
                 buffer is full; dropping the oldest waiting messages (counted in \
                 sink_dropped.mqtt)"
            );
        } else {
            log::warn!(
                "MQTT: {broker} is unreachable and the buffer is full; dropping the oldest \
                 messages until it is back (counted in sink_dropped.mqtt)"
            );
        }
    }

    fn hand_over(&mut self) {
        self.outbox.hand_over(Link::sender(&self.client, self.qos));
    }

    fn on_connected(&mut self) {
        self.reach = Reach::Connected;
        self.last_error = None;
        self.outbox
            .on_connected(&self.greeting, Link::sender(&self.client, self.qos));
    }

    /// The connection ended, or could not be made, with `error`.
    fn on_disconnected(&mut self, error: String) {
        if self.reach == Reach::Connected {
            self.reach = Reach::Lost;
        }
        self.client = None;
        self.last_error = Some(error);
        let first_drop = self.outbox.on_disconnected();
        self.warn_of_drops(first_drop);
    }

    /// Says what becomes of the `count` messages left at shutdown, `offline`
    /// among them, which depends on how the connection stands.
    fn log_abandoned(&self, count: usize, timeout: Duration) {
        let broker = &self.broker;
        let fate = match self.reach {
            Reach::Never => format!(
                "never connected to {broker}, so it has no last will and publishes no `offline`"
            ),
            Reach::Lost => format!(
                "the connection to {broker} was lost; it publishes `offline` as the last will \
                 when it notices"
            ),
            Reach::Connected => format!(
                "connected, but {broker} did not acknowledge them within {} ms (it may have \
                 some); closing the connection without DISCONNECT, so it publishes `offline` \
                 as the last will",
                timeout.as_millis()
            ),
        };
        log::warn!("MQTT: {count} messages not delivered at shutdown, counted as dropped; {fate}");
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
        let (host, port) = options.broker_address();
        let broker = format!("{host}:{port}");
        if config.insecure_auth() {
            log::warn!(
                "MQTT: allow_insecure_auth = true: the username and password go to {broker} in \
                 clear text on every connection"
            );
        }
        let builder = MessageBuilder::new(topics);
        let shared = Arc::new(Shared {
            link: Mutex::new(Link {
                outbox: Outbox::new(config.buffer, qos),
                client: None,
                qos,
                greeting: builder.on_connect(),
                reach: Reach::Never,
                last_error: None,
                broker,
            }),
            changed: Condvar::new(),
        });
        let (stop, stopped) = watch::channel(false);
        let connection = Connection {
            shared: Arc::clone(&shared),
            options,
            channel_capacity: config.buffer + CHANNEL_EXTRA,
            max_delay: Duration::from_millis(config.reconnect_max_ms),
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
            connected: link.reach == Reach::Connected,
            pending: link.outbox.len(),
            last_error: link.last_error.clone(),
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
    /// and disconnects cleanly; if that does not work out, counts what is
    /// left as dropped, says what becomes of `offline`, and drops the
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
        let abandoned = link.outbox.abandon();
        let disconnecting = abandoned == 0
            && link
                .client
                .as_ref()
                .is_some_and(|client| client.try_disconnect().is_ok());
        if abandoned > 0 {
            link.log_abandoned(abandoned, self.shutdown_timeout);
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
            let mut accepted = false;
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
                        accepted = true;
                        self.shared.update(Link::on_connected);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(event) => self.on_event(event),
                    Err(error) => break error,
                }
            };
            // What the client did before failing but had not reported yet:
            // a publish it wrote may have reached the broker.
            for event in std::mem::take(&mut eventloop.state.events) {
                self.on_event(event);
            }
            drop(eventloop);
            let error = self.explain(error, accepted);
            if failures == 0 {
                log::warn!("MQTT: {host}:{port}: {error}; buffering messages and reconnecting");
            } else {
                log::debug!("MQTT: {host}:{port}: {error} (attempt {failures})");
            }
            self.shared.update(|link| link.on_disconnected(error));
            failures += 1;
            tokio::select! {
                _ = self.stopped.wait_for(|&stop| stop) => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(self.max_delay);
        }
    }

    /// Feeds a write or an acknowledgement of the client to the outbox.
    fn on_event(&self, event: Event) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                self.shared.update(|link| link.outbox.on_written(pkid));
            }
            Event::Incoming(Packet::PubAck(PubAck { pkid, .. }))
            | Event::Incoming(Packet::PubComp(PubComp { pkid, .. })) => {
                self.shared.update(|link| {
                    link.outbox.on_acknowledged(pkid);
                    link.hand_over();
                });
            }
            _ => {}
        }
    }

    /// The text of a connection error, with the likely cause when a plain
    /// connection broke before the broker answered: a TLS listener.
    fn explain(&self, error: ConnectionError, accepted: bool) -> String {
        let plain = matches!(self.options.transport(), Transport::Tcp);
        let broke_off = matches!(
            error,
            ConnectionError::MqttState(_) | ConnectionError::NotConnAck(_)
        );
        if plain && !accepted && broke_off {
            let port = self.options.broker_address().1;
            format!("{error} (is port {port} a TLS listener? set [mqtt.tls])")
        } else {
            error.to_string()
        }
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
            device_id: Some("kiosk 1".into()),
            ..Default::default()
        })
        .contains("device id"));
    }

    #[test]
    fn numbers_out_of_range_are_refused_naming_key_value_and_range() {
        let refused = |config: MqttConfig| config.check().err().map(|e| e.to_string());
        let cases = [
            (
                MqttConfig {
                    shutdown_timeout_ms: MAX_SHUTDOWN_TIMEOUT_MS + 1,
                    ..Default::default()
                },
                "`mqtt.shutdown_timeout_ms`: 7001 is not in [0, 7000]",
            ),
            (
                MqttConfig {
                    keep_alive_s: 0,
                    ..Default::default()
                },
                "`mqtt.keep_alive_s`: 0 is not in [1, 3600]",
            ),
            (
                MqttConfig {
                    reconnect_max_ms: 100,
                    ..Default::default()
                },
                "`mqtt.reconnect_max_ms`: 100 is not in [250, 600000]",
            ),
            (
                MqttConfig {
                    buffer: 0,
                    ..Default::default()
                },
                "`mqtt.buffer`: 0 is not in [1, 100000]",
            ),
        ];
        for (config, error) in cases {
            assert_eq!(refused(config).as_deref(), Some(error));
        }
        let edges = MqttConfig {
            shutdown_timeout_ms: MAX_SHUTDOWN_TIMEOUT_MS,
            keep_alive_s: 3600,
            reconnect_max_ms: 600_000,
            buffer: 100_000,
            ..Default::default()
        };
        assert_eq!(refused(edges), None);
    }

    #[test]
    fn credentials_without_tls_need_allow_insecure_auth() {
        let config = MqttConfig {
            username: Some("kiosk".into()),
            password: Some("secret".into()),
            ..Default::default()
        };
        let error = config.check().unwrap_err().to_string();
        assert!(
            error.contains("clear text")
                && error.contains("[mqtt.tls]")
                && error.contains("allow_insecure_auth = true"),
            "{error}"
        );
        let allowed = MqttConfig {
            allow_insecure_auth: true,
            ..config
        };
        assert!(allowed.check().is_ok());
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
        // All 5 and `offline`: none was delivered.
        assert_eq!(sink.dropped(), 6);
        assert_eq!(sink.buffered(), 0);
    }

    #[test]
    fn the_link_state_names_the_last_connection_error() {
        let sink = MqttSink::start(&MqttConfig {
            port: Some(1),
            ..Default::default()
        })
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.link().unwrap().last_error.is_none() {
            assert!(Instant::now() < deadline, "no error within 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        let link = sink.link().unwrap();
        let error = link.last_error.unwrap();
        assert!(error.contains("refused"), "{error}");
        assert!(!error.contains("TLS"), "{error}");
        assert!(!link.connected);
    }
}
