//! JSON-lines log sink: every message the MQTT sink would publish, one line
//! each on stdout as `{"topic": ..., "payload": ...}` (journald keeps one
//! entry per line). Diagnostics go through `log` to stderr, never here.

use super::message::{Message, MessageBuilder, Topics};
use super::{Sink, Stats};
use crate::track::TrackEvent;
use serde::{Deserialize, Serialize};
use std::io::{Stdout, Write};
use std::time::Instant;

/// The `[log]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Print every message (availability, events, state, stats) as a JSON
    /// line on stdout, with the topic names of `[mqtt]`.
    pub enabled: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { enabled: true }
    }
}

/// Writes messages as JSON lines to `out` (stdout in the service).
pub struct JsonLogSink<W: Write + Send> {
    builder: MessageBuilder,
    out: W,
    dropped: u64,
    shut_down: bool,
}

impl JsonLogSink<Stdout> {
    pub fn stdout(topics: Topics) -> Self {
        JsonLogSink::new(topics, std::io::stdout())
    }
}

impl<W: Write + Send> JsonLogSink<W> {
    /// Starts the log with what MQTT publishes on connecting: availability
    /// `online` and the (empty) state.
    pub fn new(topics: Topics, out: W) -> Self {
        let mut sink = JsonLogSink {
            builder: MessageBuilder::new(topics),
            out,
            dropped: 0,
            shut_down: false,
        };
        sink.write_all(&sink.builder.on_connect());
        sink
    }

    fn write_all(&mut self, messages: &[Message]) {
        for message in messages {
            let written = serde_json::to_writer(&mut self.out, message)
                .map_err(std::io::Error::from)
                .and_then(|()| self.out.write_all(b"\n"))
                .and_then(|()| self.out.flush());
            if let Err(e) = written {
                if self.dropped == 0 {
                    log::warn!("JSON log: cannot write to the output ({e}); counting lost lines");
                }
                self.dropped += 1;
            }
        }
    }
}

impl<W: Write + Send> Sink for JsonLogSink<W> {
    fn name(&self) -> &'static str {
        "log"
    }

    fn events(&mut self, events: &[TrackEvent], _now: Instant) {
        let messages = self.builder.events(events);
        self.write_all(&messages);
    }

    fn stats(&mut self, stats: &Stats) {
        let message = self.builder.stats(stats);
        self.write_all(&[message]);
    }

    fn shutdown(&mut self) {
        if !std::mem::replace(&mut self.shut_down, true) {
            let offline = self.builder.availability(false);
            self.write_all(&[offline]);
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl<W: Write + Send> Drop for JsonLogSink<W> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face::Expression;
    use crate::signal::test_events::event;
    use crate::track::EventKind;

    fn lines(bytes: &[u8]) -> Vec<serde_json::Value> {
        std::str::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn one_json_line_per_message_from_online_to_offline() {
        let topics = Topics::new("fer-edge", "kiosk").unwrap();
        let mut out = Vec::new();
        {
            let mut sink = JsonLogSink::new(topics, &mut out);
            sink.events(
                &[event(EventKind::New, 1, Expression::Sadness)],
                Instant::now(),
            );
            sink.stats(&Stats::default());
            sink.shutdown();
            sink.shutdown();
        }
        let topics: Vec<String> = lines(&out)
            .iter()
            .map(|line| line["topic"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            topics,
            [
                "fer-edge/kiosk/availability",
                "fer-edge/kiosk/state",
                "fer-edge/kiosk/events",
                "fer-edge/kiosk/state",
                "fer-edge/kiosk/stats",
                "fer-edge/kiosk/availability",
            ]
        );
        let parsed = lines(&out);
        assert_eq!(parsed[0]["payload"], "online");
        assert_eq!(parsed[2]["payload"]["expression"], "sadness");
        assert_eq!(parsed[5]["payload"], "offline");
    }

    /// A writer whose every write fails, like a closed stdout.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_that_cannot_be_written_are_counted() {
        let mut sink = JsonLogSink::new(Topics::new("p", "d").unwrap(), Broken);
        assert_eq!(sink.dropped(), 2, "online and state");
        sink.stats(&Stats::default());
        assert_eq!(sink.dropped(), 3);
    }

    #[test]
    fn config_rejects_unknown_keys() {
        let config: LogConfig = toml::from_str("enabled = false").unwrap();
        assert!(!config.enabled);
        let error = toml::from_str::<LogConfig>("enable = true").unwrap_err();
        assert!(
            error.to_string().contains("unknown field `enable`"),
            "{error}"
        );
    }
}
