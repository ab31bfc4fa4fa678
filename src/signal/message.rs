//! The messages the log and MQTT sinks publish: topic names, payloads and
//! the presence state derived from track events, built here and only here.
//!
//! Under `<prefix>/<device_id>/`:
//!
//! | topic | payload | retained |
//! |---|---|---|
//! | `availability` | `online` / `offline` (plain text; MQTT last will) | yes |
//! | `events` | one [`TrackEvent`]: `{"type": "new"/"update"/"end", "id", "box", "expression", "score", "scores", "start_time", "timestamp"}` | no |
//! | `state` | `{"faces", "face_present", "expression", "expressions"}` of the faces visible now, on every change | yes |
//! | `stats` | [`Stats`] | no |
//!
//! Home Assistant discovery configs go to
//! `<discovery_prefix>/{sensor,binary_sensor}/<device_id>/<object>/config`.

use super::{ExpressionCounts, Stats};
use crate::face::Expression;
use crate::track::{EventKind, TrackEvent};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Availability payload while the device runs.
pub const ONLINE: &str = "online";
/// Availability payload once it stopped (clean shutdown or last will).
pub const OFFLINE: &str = "offline";

/// A topic name part that MQTT or Home Assistant would not accept.
#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error(
        "topic prefix {0:?} must be one or more non-empty topic levels separated by `/`, \
         without `+` or `#`"
    )]
    InvalidPrefix(String),
    #[error("device id {0:?} must be non-empty and use only letters, digits, `_` and `-`")]
    InvalidDeviceId(String),
}

/// The topic names of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    base: String,
    device_id: String,
    discovery_prefix: Option<String>,
}

impl Topics {
    /// Topics under `<prefix>/<device_id>/`.
    pub fn new(prefix: &str, device_id: &str) -> Result<Self, TopicError> {
        check_prefix(prefix)?;
        let valid_id = !device_id.is_empty()
            && device_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_id {
            return Err(TopicError::InvalidDeviceId(device_id.to_string()));
        }
        Ok(Topics {
            base: format!("{prefix}/{device_id}"),
            device_id: device_id.to_string(),
            discovery_prefix: None,
        })
    }

    /// Adds Home Assistant discovery configs under `discovery_prefix`.
    pub fn with_discovery(mut self, discovery_prefix: &str) -> Result<Self, TopicError> {
        check_prefix(discovery_prefix)?;
        self.discovery_prefix = Some(discovery_prefix.to_string());
        Ok(self)
    }

    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    pub fn availability(&self) -> String {
        format!("{}/availability", self.base)
    }

    pub fn events(&self) -> String {
        format!("{}/events", self.base)
    }

    pub fn state(&self) -> String {
        format!("{}/state", self.base)
    }

    pub fn stats(&self) -> String {
        format!("{}/stats", self.base)
    }
}

fn check_prefix(prefix: &str) -> Result<(), TopicError> {
    let valid = prefix
        .split('/')
        .all(|level| !level.is_empty() && !level.contains(['+', '#', '\0']));
    if valid {
        Ok(())
    } else {
        Err(TopicError::InvalidPrefix(prefix.to_string()))
    }
}

/// One message: a topic and a JSON payload. The log prints it as
/// `{"topic": ..., "payload": ...}`; MQTT publishes [`Message::payload_bytes`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Message {
    pub topic: String,
    pub payload: Value,
    /// Whether the broker keeps it for later subscribers.
    #[serde(skip)]
    pub retain: bool,
}

impl Message {
    /// The MQTT payload: a JSON string's text as is (so availability is
    /// `online`, as Home Assistant expects), anything else as compact JSON.
    pub fn payload_bytes(&self) -> Vec<u8> {
        match &self.payload {
            Value::String(text) => text.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        }
    }
}

/// JSON of a value whose serialisation cannot fail (string-keyed maps
/// only). It goes through text so `f32` fields keep their short form (`0.8`,
/// not the `0.800000011920929` of widening to `f64`).
fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_string(value)
        .and_then(|text| serde_json::from_str(&text))
        .expect("signal payloads serialise to JSON")
}

/// The faces visible now, kept up to date from track events.
#[derive(Clone, Debug, Default)]
pub struct Presence {
    /// Track id -> (expression, its score).
    faces: BTreeMap<u64, (Expression, f32)>,
}

/// What the `state` topic says about the faces visible now.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PresenceSummary {
    /// Number of faces visible.
    pub faces: usize,
    /// Whether any face is visible.
    pub face_present: bool,
    /// The expression most visible faces show (ties: the higher summed
    /// score), `none` without faces.
    pub expression: &'static str,
    /// Visible faces per expression.
    pub expressions: ExpressionCounts,
}

impl Presence {
    /// Folds in the events of one frame.
    pub fn apply(&mut self, events: &[TrackEvent]) {
        for event in events {
            match event.kind {
                EventKind::New | EventKind::Update => {
                    self.faces.insert(event.id, (event.expression, event.score));
                }
                EventKind::End => {
                    self.faces.remove(&event.id);
                }
            }
        }
    }

    /// Number of faces visible.
    pub fn count(&self) -> usize {
        self.faces.len()
    }

    /// Whether a visible face shows `expression`.
    pub fn shows(&self, expression: Expression) -> bool {
        self.faces.values().any(|&(shown, _)| shown == expression)
    }

    pub fn summary(&self) -> PresenceSummary {
        let mut counts = ExpressionCounts::default();
        let mut score_sums = [0.0f32; Expression::COUNT];
        for &(expression, score) in self.faces.values() {
            counts.add(expression);
            score_sums[expression.index()] += score;
        }
        let dominant = Expression::ALL
            .into_iter()
            .filter(|&e| counts.get(e) > 0)
            .max_by(|&a, &b| {
                counts
                    .get(a)
                    .cmp(&counts.get(b))
                    .then(score_sums[a.index()].total_cmp(&score_sums[b.index()]))
            });
        PresenceSummary {
            faces: self.faces.len(),
            face_present: !self.faces.is_empty(),
            expression: dominant.map_or("none", Expression::name),
            expressions: counts,
        }
    }
}

/// Builds every message of one device from events and stats. Each sink owns
/// one, so each knows which state it last published.
#[derive(Clone, Debug)]
pub struct MessageBuilder {
    topics: Topics,
    presence: Presence,
    published_state: PresenceSummary,
}

impl MessageBuilder {
    pub fn new(topics: Topics) -> Self {
        let presence = Presence::default();
        MessageBuilder {
            topics,
            published_state: presence.summary(),
            presence,
        }
    }

    /// Retained `online` or `offline` on the availability topic.
    pub fn availability(&self, online: bool) -> Message {
        Message {
            topic: self.topics.availability(),
            payload: Value::from(if online { ONLINE } else { OFFLINE }),
            retain: true,
        }
    }

    /// One message per event on the events topic, then the state if the
    /// events changed it.
    pub fn events(&mut self, events: &[TrackEvent]) -> Vec<Message> {
        let mut messages: Vec<Message> = events
            .iter()
            .map(|event| Message {
                topic: self.topics.events(),
                payload: to_json(event),
                retain: false,
            })
            .collect();
        self.presence.apply(events);
        let state = self.presence.summary();
        if state != self.published_state {
            self.published_state = state;
            messages.push(self.state());
        }
        messages
    }

    /// The retained state of the faces visible now.
    pub fn state(&self) -> Message {
        Message {
            topic: self.topics.state(),
            payload: to_json(&self.published_state),
            retain: true,
        }
    }

    pub fn stats(&self, stats: &Stats) -> Message {
        Message {
            topic: self.topics.stats(),
            payload: to_json(stats),
            retain: false,
        }
    }

    /// What a sink says when it (re)connects: availability `online`, the
    /// Home Assistant discovery configs if enabled, and the current state.
    pub fn on_connect(&self) -> Vec<Message> {
        let mut messages = vec![self.availability(true)];
        messages.extend(self.discovery());
        messages.push(self.state());
        messages
    }

    /// Retained Home Assistant discovery configs: an `expression` sensor, a
    /// `faces` count sensor and a `face_present` binary sensor, all reading
    /// the state topic.
    fn discovery(&self) -> Vec<Message> {
        let Some(discovery_prefix) = &self.topics.discovery_prefix else {
            return Vec::new();
        };
        let id = &self.topics.device_id;
        let entity = |component: &str, object: &str, name: &str, extra: Value| {
            let mut config = json!({
                "name": name,
                "unique_id": format!("fer_edge_{id}_{object}"),
                "state_topic": self.topics.state(),
                "availability_topic": self.topics.availability(),
                "payload_available": ONLINE,
                "payload_not_available": OFFLINE,
                "device": {
                    "identifiers": [format!("fer_edge_{id}")],
                    "name": format!("fer-edge {id}"),
                    "manufacturer": "fer-edge",
                    "model": "fer-edge",
                    "sw_version": env!("CARGO_PKG_VERSION"),
                },
            });
            if let (Value::Object(config), Value::Object(extra)) = (&mut config, extra) {
                config.extend(extra);
            }
            Message {
                topic: format!("{discovery_prefix}/{component}/{id}/{object}/config"),
                payload: config,
                retain: true,
            }
        };
        vec![
            entity(
                "sensor",
                "expression",
                "Expression",
                json!({
                    "value_template": "{{ value_json.expression }}",
                    "icon": "mdi:emoticon-outline",
                }),
            ),
            entity(
                "sensor",
                "faces",
                "Faces",
                json!({
                    "value_template": "{{ value_json.faces }}",
                    "state_class": "measurement",
                    "icon": "mdi:face-recognition",
                }),
            ),
            entity(
                "binary_sensor",
                "face_present",
                "Face present",
                json!({
                    "value_template": "{{ 'ON' if value_json.face_present else 'OFF' }}",
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "device_class": "occupancy",
                }),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::test_events::event;
    use Expression::*;

    fn builder() -> MessageBuilder {
        MessageBuilder::new(Topics::new("fer-edge", "kiosk-1").unwrap())
    }

    #[test]
    fn topic_parts_are_checked() {
        assert!(Topics::new("site/fer-edge", "kiosk_1").is_ok());
        for prefix in ["", "/fer-edge", "fer-edge/", "a//b", "a/+", "#"] {
            assert!(
                matches!(Topics::new(prefix, "k"), Err(TopicError::InvalidPrefix(_))),
                "{prefix:?}"
            );
        }
        for id in ["", "kiosk 1", "kiosk/1", "kiosk+", "kiosk.lan"] {
            assert!(
                matches!(
                    Topics::new("fer-edge", id),
                    Err(TopicError::InvalidDeviceId(_))
                ),
                "{id:?}"
            );
        }
    }

    #[test]
    fn events_then_state_when_it_changes() {
        let mut builder = builder();
        let messages = builder.events(&[event(EventKind::New, 7, Happiness)]);
        let topics: Vec<&str> = messages.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            topics,
            ["fer-edge/kiosk-1/events", "fer-edge/kiosk-1/state"]
        );
        assert_eq!(messages[0].payload["type"], "new");
        assert_eq!(messages[0].payload["id"], 7);
        assert!(!messages[0].retain);
        assert_eq!(
            messages[1].payload,
            json!({"faces": 1, "face_present": true, "expression": "happiness",
                   "expressions": {"anger": 0, "disgust": 0, "fear": 0, "happiness": 1,
                                   "neutral": 0, "sadness": 0, "surprise": 0}})
        );
        assert!(messages[1].retain);
        // The same expression again: no state change, no state message.
        let again = builder.events(&[event(EventKind::Update, 7, Happiness)]);
        assert_eq!(again.len(), 1);
        let gone = builder.events(&[event(EventKind::End, 7, Happiness)]);
        assert_eq!(gone[1].payload["face_present"], false);
        assert_eq!(gone[1].payload["expression"], "none");
    }

    #[test]
    fn scores_keep_their_short_form() {
        let messages = builder().events(&[event(EventKind::New, 1, Fear)]);
        let text = String::from_utf8(messages[0].payload_bytes()).unwrap();
        assert!(text.contains(r#""score":0.8,"#), "{text}");
    }

    #[test]
    fn dominant_expression_is_the_most_shown_then_the_highest_scored() {
        let mut presence = Presence::default();
        let mut strong_fear = event(EventKind::New, 3, Fear);
        strong_fear.score = 0.95;
        presence.apply(&[
            event(EventKind::New, 1, Anger),
            event(EventKind::New, 2, Anger),
            strong_fear,
        ]);
        assert_eq!(presence.summary().expression, "anger");
        presence.apply(&[event(EventKind::End, 2, Anger)]);
        assert_eq!(presence.summary().expression, "fear");
        assert!(presence.shows(Anger) && !presence.shows(Disgust));
        assert_eq!(presence.count(), 2);
    }

    #[test]
    fn availability_is_plain_text_on_mqtt_and_a_json_string_in_the_log() {
        let online = builder().availability(true);
        assert_eq!(online.payload_bytes(), b"online");
        assert_eq!(
            serde_json::to_string(&online).unwrap(),
            r#"{"topic":"fer-edge/kiosk-1/availability","payload":"online"}"#
        );
        let stats = builder().stats(&Stats::default());
        let parsed: Value = serde_json::from_slice(&stats.payload_bytes()).unwrap();
        assert_eq!(parsed["frames"], 0);
    }

    #[test]
    fn discovery_only_when_enabled() {
        assert_eq!(builder().on_connect().len(), 2, "availability and state");
        let topics = Topics::new("fer-edge", "kiosk-1")
            .unwrap()
            .with_discovery("homeassistant")
            .unwrap();
        let messages = MessageBuilder::new(topics).on_connect();
        let discovery: Vec<&Message> = messages
            .iter()
            .filter(|m| m.topic.starts_with("homeassistant/"))
            .collect();
        let names: Vec<&str> = discovery.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            names,
            [
                "homeassistant/sensor/kiosk-1/expression/config",
                "homeassistant/sensor/kiosk-1/faces/config",
                "homeassistant/binary_sensor/kiosk-1/face_present/config"
            ]
        );
        for message in discovery {
            assert!(message.retain);
            assert_eq!(message.payload["state_topic"], "fer-edge/kiosk-1/state");
            assert_eq!(
                message.payload["availability_topic"],
                "fer-edge/kiosk-1/availability"
            );
            assert!(message.payload["value_template"].is_string());
        }
    }
}
