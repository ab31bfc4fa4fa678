//! Signalling: tells the outside world what the tracker sees.
//!
//! The service loop drives one [`Sink`] per configured output with the
//! tracker's [`TrackEvent`]s, periodic [`Stats`] and a clock tick. Three
//! sinks exist, one module each: [`jsonlog`] (JSON lines on stdout), [`mqtt`]
//! (a broker, optionally with Home Assistant discovery) and [`gpio`] (output
//! pins). The log and MQTT sinks publish the same topics and payloads, built
//! in one place by [`message`]; [`build_sinks`] turns the `[log]`, `[mqtt]`
//! and `[gpio]` config tables into a [`Sinks`] fan-out.

pub mod gpio;
pub mod jsonlog;
pub mod message;
pub mod mqtt;

use crate::face::Expression;
use crate::track::{EventKind, TrackEvent};
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::time::Instant;

pub use gpio::{GpioConfig, GpioError, GpioSink};
pub use jsonlog::{JsonLogSink, LogConfig};
pub use message::{Message, MessageBuilder, Presence, Topics};
pub use mqtt::{MqttConfig, MqttError, MqttSink, TlsConfig};

/// An output the service loop drives. Methods never block the frame loop for
/// long and never fail it: a sink logs its own problems (through `log`) and
/// counts what it could not deliver in [`Sink::dropped`].
pub trait Sink: Send {
    /// Short name for logs and [`Stats::sink_dropped`] (`log`, `mqtt`, `gpio`).
    fn name(&self) -> &'static str;

    /// The events of one frame, in the tracker's order; `now` is when the
    /// frame was processed.
    fn events(&mut self, events: &[TrackEvent], now: Instant);

    /// Periodic counters of the service.
    fn stats(&mut self, stats: &Stats);

    /// Called on every loop iteration, events or not: time-based work such
    /// as releasing a GPIO pin once its hold time is over.
    fn tick(&mut self, _now: Instant) {}

    /// Leaves outputs in their safe state: publishes `offline`, releases
    /// pins, flushes. Called once at exit; later calls do nothing.
    fn shutdown(&mut self);

    /// Messages or pin changes this sink could not deliver since start.
    fn dropped(&self) -> u64 {
        0
    }

    /// The state of the sink's link (connection), for sinks that have one (MQTT).
    fn link(&self) -> Option<LinkState> {
        None
    }
}

/// A sink's link to the outside world.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkState {
    /// The peer (the broker) accepted the current connection.
    pub connected: bool,
    /// Messages waiting for the peer's acknowledgement.
    pub pending: usize,
    /// Why the last connection failed or could not be made; none since the
    /// peer last accepted one.
    pub last_error: Option<String>,
}

/// All configured sinks, driven as one.
#[derive(Default)]
pub struct Sinks {
    sinks: Vec<Box<dyn Sink>>,
}

impl Sinks {
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Self {
        Sinks { sinks }
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Names of the sinks, in the order they are driven.
    pub fn names(&self) -> Vec<&'static str> {
        self.sinks.iter().map(|sink| sink.name()).collect()
    }

    /// The sink called `name`, if configured.
    pub fn get(&self, name: &str) -> Option<&dyn Sink> {
        self.sinks
            .iter()
            .find(|sink| sink.name() == name)
            .map(|sink| &**sink)
    }

    /// What each sink dropped, by name: the value for [`Stats::sink_dropped`].
    pub fn dropped_by_sink(&self) -> BTreeMap<String, u64> {
        self.sinks
            .iter()
            .map(|sink| (sink.name().to_string(), sink.dropped()))
            .collect()
    }
}

impl Sink for Sinks {
    fn name(&self) -> &'static str {
        "sinks"
    }

    fn events(&mut self, events: &[TrackEvent], now: Instant) {
        for sink in &mut self.sinks {
            sink.events(events, now);
        }
    }

    fn stats(&mut self, stats: &Stats) {
        for sink in &mut self.sinks {
            sink.stats(stats);
        }
    }

    fn tick(&mut self, now: Instant) {
        for sink in &mut self.sinks {
            sink.tick(now);
        }
    }

    fn shutdown(&mut self) {
        for sink in &mut self.sinks {
            sink.shutdown();
        }
    }

    fn dropped(&self) -> u64 {
        self.sinks.iter().map(|sink| sink.dropped()).sum()
    }
}

/// Why the configured sinks could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("[mqtt]: {0}")]
    Mqtt(#[from] MqttError),
    #[error("[gpio]: {0}")]
    Gpio(#[from] GpioError),
}

/// The sinks the three config tables enable, in the order log, MQTT, GPIO.
/// The log uses the MQTT topic names (`mqtt.prefix`, `mqtt.device_id`)
/// whether or not MQTT is enabled.
pub fn build_sinks(
    log: &LogConfig,
    mqtt: &MqttConfig,
    gpio: &GpioConfig,
) -> Result<Sinks, BuildError> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if log.enabled {
        sinks.push(Box::new(JsonLogSink::stdout(mqtt.topics()?)));
    }
    if mqtt.enabled {
        sinks.push(Box::new(MqttSink::start(mqtt)?));
    }
    if gpio.enabled {
        sinks.push(Box::new(GpioSink::new(gpio, gpio::open_pins(gpio)?)?));
    }
    Ok(Sinks::new(sinks))
}

/// A count per expression, serialised as a map from expression name to count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpressionCounts(pub [u64; Expression::COUNT]);

impl ExpressionCounts {
    pub fn get(&self, expression: Expression) -> u64 {
        self.0[expression.index()]
    }

    pub fn add(&mut self, expression: Expression) {
        self.0[expression.index()] += 1;
    }
}

impl Serialize for ExpressionCounts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(Expression::COUNT))?;
        for expression in Expression::ALL {
            map.serialize_entry(expression.name(), &self.get(expression))?;
        }
        map.end()
    }
}

/// Counters of the service, published periodically on the `stats` topic.
/// Counts are since start; rates are over the service's last period.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Frames processed.
    pub frames: u64,
    /// Faces announced (tracks that had their `new` event).
    pub faces: u64,
    /// Times each expression was announced or switched to (`new` and
    /// `update` events).
    pub expressions: ExpressionCounts,
    /// Frames processed per second.
    pub fps: f32,
    /// Mean inference time per frame, milliseconds.
    pub inference_ms: f32,
    /// Frames the camera delivered that the loop had no time for.
    pub dropped_frames: u64,
    /// Frames that could not be decoded.
    pub corrupt_frames: u64,
    /// Messages or pin changes each sink could not deliver, by sink name
    /// (from [`Sinks::dropped_by_sink`]).
    pub sink_dropped: BTreeMap<String, u64>,
    /// The frame source now: an outage shows here.
    pub capture: crate::capture::SourceState,
    /// The MQTT link now, when MQTT is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<LinkState>,
}

impl Stats {
    /// Adds the tracker's events to `faces` and `expressions`.
    pub fn count_events(&mut self, events: &[TrackEvent]) {
        for event in events {
            match event.kind {
                EventKind::New => {
                    self.faces += 1;
                    self.expressions.add(event.expression);
                }
                EventKind::Update => self.expressions.add(event.expression),
                EventKind::End => {}
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod test_events {
    //! Track events for the signalling unit tests.

    use crate::face::{Expression, ExpressionScores};
    use crate::track::{EventKind, TrackEvent};

    /// An event of face `id` showing `expression` with score 0.8.
    pub fn event(kind: EventKind, id: u64, expression: Expression) -> TrackEvent {
        let mut scores = [0.02; Expression::COUNT];
        scores[expression.index()] = 0.8;
        TrackEvent {
            kind,
            id,
            bbox: [10.0, 20.0, 110.0, 140.0],
            expression,
            score: 0.8,
            scores: ExpressionScores(scores),
            start_time: 1.0,
            timestamp: 2.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_events::event;
    use super::*;

    #[test]
    fn stats_count_new_and_update_events_per_expression() {
        use Expression::*;
        let mut stats = Stats::default();
        stats.count_events(&[
            event(EventKind::New, 1, Happiness),
            event(EventKind::New, 2, Neutral),
            event(EventKind::Update, 1, Surprise),
            event(EventKind::End, 2, Neutral),
        ]);
        assert_eq!(stats.faces, 2);
        assert_eq!(stats.expressions.get(Happiness), 1);
        assert_eq!(stats.expressions.get(Surprise), 1);
        assert_eq!(stats.expressions.get(Neutral), 1);
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["expressions"]["surprise"], 1);
        assert_eq!(json["expressions"].as_object().unwrap().len(), 7);
        assert!(json["sink_dropped"].is_object());
    }

    #[test]
    fn sinks_report_drops_by_name() {
        let log = JsonLogSink::new(Topics::new("fer-edge", "kiosk").unwrap(), Vec::new());
        let sinks = Sinks::new(vec![Box::new(log)]);
        assert_eq!(sinks.names(), ["log"]);
        assert_eq!(sinks.dropped_by_sink()["log"], 0);
    }

    #[test]
    fn nothing_enabled_builds_no_sink() {
        let log = LogConfig { enabled: false };
        let sinks = build_sinks(&log, &MqttConfig::default(), &GpioConfig::default()).unwrap();
        assert!(sinks.is_empty());
    }
}
