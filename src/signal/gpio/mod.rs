//! GPIO sink: output pins that follow face presence and expressions, e.g.
//! a relay or a lamp per expression.
//!
//! Each configured pin is on while a visible face shows its expression (or,
//! for `face_present`, while any face is visible). A pin that turned on
//! stays on for at least `min_hold_ms`, so a short flicker cannot pulse a
//! relay. `active_low` inverts the levels for boards whose inputs switch on
//! low. Pins are driven to their inactive level on shutdown and on drop.
//!
//! Backends, one module each behind [`OutputPins`]: [`rppal`] (Raspberry
//! Pi), [`cdev`] (Linux GPIO character device, `/dev/gpiochipN`: Jetson and
//! other boards) and [`recording`] (records every change, for tests).

pub mod cdev;
pub mod recording;
pub mod rppal;

use super::message::Presence;
use super::{Sink, Stats};
use crate::face::Expression;
use crate::track::TrackEvent;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// What a pin shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PinSignal {
    /// At least one face is visible.
    FacePresent,
    /// A visible face shows this expression.
    Expression(Expression),
}

/// A `pins` key that is neither `face_present` nor an expression.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown gpio signal `{0}`: expected `face_present` or one of anger, disgust, fear, \
     happiness, neutral, sadness, surprise"
)]
pub struct UnknownSignal(String);

impl FromStr for PinSignal {
    type Err = UnknownSignal;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if name == "face_present" {
            return Ok(PinSignal::FacePresent);
        }
        Expression::ALL
            .into_iter()
            .find(|e| e.name() == name)
            .map(PinSignal::Expression)
            .ok_or_else(|| UnknownSignal(name.to_string()))
    }
}

impl fmt::Display for PinSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSignal::FacePresent => f.write_str("face_present"),
            PinSignal::Expression(expression) => f.write_str(expression.name()),
        }
    }
}

impl Serialize for PinSignal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PinSignal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// Which driver opens the pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GpioBackend {
    /// rppal, Raspberry Pi only; lines are BCM GPIO numbers.
    Rppal,
    /// Linux GPIO character device `chip`; lines are its line offsets.
    Cdev,
}

/// The `[gpio]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpioConfig {
    /// Drive output pins.
    pub enabled: bool,
    /// `rppal` (Raspberry Pi) or `cdev` (any board with /dev/gpiochipN).
    pub backend: GpioBackend,
    /// The GPIO character device of the `cdev` backend.
    pub chip: PathBuf,
    /// Active pins are driven low and inactive ones high.
    pub active_low: bool,
    /// A pin that turned on stays on at least this long, milliseconds.
    pub min_hold_ms: u64,
    /// Signal -> line: `face_present` or an expression name, to a BCM number
    /// (`rppal`) or a line offset of `chip` (`cdev`).
    pub pins: BTreeMap<PinSignal, u32>,
}

impl Default for GpioConfig {
    fn default() -> Self {
        GpioConfig {
            enabled: false,
            backend: GpioBackend::Cdev,
            chip: "/dev/gpiochip0".into(),
            active_low: false,
            min_hold_ms: 1000,
            pins: BTreeMap::new(),
        }
    }
}

impl GpioConfig {
    /// The physical level of a pin that is on (`active`) or off.
    pub fn level(&self, active: bool) -> Level {
        if active != self.active_low {
            Level::High
        } else {
            Level::Low
        }
    }

    /// Each configured line with its inactive level: how backends open them.
    pub fn safe_levels(&self) -> Vec<(u32, Level)> {
        self.pins
            .values()
            .map(|&line| (line, self.level(false)))
            .collect()
    }

    /// Checks `min_hold_ms` (an hour at most).
    pub fn check_hold(&self) -> Result<(), crate::config::InvalidKey> {
        crate::config::in_range("gpio.min_hold_ms", self.min_hold_ms, 0..=3_600_000)
    }

    /// Checks the pin map without opening any pin.
    pub fn check(&self) -> Result<(), GpioError> {
        if self.pins.is_empty() {
            return Err(GpioError::NoPins);
        }
        let mut owners: BTreeMap<u32, PinSignal> = BTreeMap::new();
        for (&signal, &line) in &self.pins {
            if let Some(&first) = owners.get(&line) {
                return Err(GpioError::SharedLine {
                    line,
                    first,
                    second: signal,
                });
            }
            owners.insert(line, signal);
        }
        Ok(())
    }
}

/// A pin's electrical level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Low,
    High,
}

/// Why pins could not be set up or driven.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("enabled but `pins` is empty")]
    NoPins,
    #[error("line {line} is given to both `{first}` and `{second}`")]
    SharedLine {
        line: u32,
        first: PinSignal,
        second: PinSignal,
    },
    #[error("rppal: {0}")]
    Rppal(#[from] ::rppal::gpio::Error),
    #[error("rppal: line {0} is not a BCM GPIO number")]
    NotBcm(u32),
    #[error("line {0} was not opened as an output")]
    NotOpened(u32),
    #[error("{chip}: cannot request lines {lines:?} as outputs: {source}")]
    CdevRequest {
        chip: PathBuf,
        lines: Vec<u32>,
        source: gpiocdev::Error,
    },
    #[error("{chip}: cannot set line {line}: {source}")]
    CdevSet {
        chip: PathBuf,
        line: u32,
        source: gpiocdev::Error,
    },
}

/// Output lines of one backend, opened at their inactive level.
pub trait OutputPins: Send {
    /// Drives `line` to `level`. `at` is the sink's clock at the change:
    /// hardware backends act at once, the recording backend logs it.
    fn set(&mut self, line: u32, level: Level, at: Instant) -> Result<(), GpioError>;
}

/// Opens the configured backend with every line at its inactive level.
pub fn open_pins(config: &GpioConfig) -> Result<Box<dyn OutputPins>, GpioError> {
    let lines = config.safe_levels();
    Ok(match config.backend {
        GpioBackend::Rppal => Box::new(self::rppal::RppalPins::open(&lines)?),
        GpioBackend::Cdev => Box::new(self::cdev::CdevPins::open(&config.chip, &lines)?),
    })
}

/// One configured pin and its state.
#[derive(Debug)]
struct Output {
    signal: PinSignal,
    line: u32,
    on: bool,
    on_since: Instant,
}

/// Signals a pin can show: `face_present` and each expression.
const PIN_SIGNALS: usize = 1 + Expression::COUNT;

/// Drives the configured pins from track events.
pub struct GpioSink {
    /// One per configured signal: a fixed array, as the signals are few.
    outputs: heapless::Vec<Output, PIN_SIGNALS>,
    pins: Box<dyn OutputPins>,
    presence: Presence,
    on_level: Level,
    off_level: Level,
    min_hold: Duration,
    failed_writes: u64,
    shut_down: bool,
}

impl GpioSink {
    /// A sink driving `pins`, which the backend opened inactive (see
    /// [`open_pins`]).
    pub fn new(config: &GpioConfig, pins: Box<dyn OutputPins>) -> Result<Self, GpioError> {
        config.check()?;
        let opened = Instant::now();
        Ok(GpioSink {
            outputs: config
                .pins
                .iter()
                .map(|(&signal, &line)| Output {
                    signal,
                    line,
                    on: false,
                    on_since: opened,
                })
                .collect(),
            pins,
            presence: Presence::default(),
            on_level: config.level(true),
            off_level: config.level(false),
            min_hold: Duration::from_millis(config.min_hold_ms),
            failed_writes: 0,
            shut_down: false,
        })
    }

    fn wanted(&self, signal: PinSignal) -> bool {
        match signal {
            PinSignal::FacePresent => self.presence.count() > 0,
            PinSignal::Expression(expression) => self.presence.shows(expression),
        }
    }

    /// Turns pins on at once and off once their hold time is over.
    fn refresh(&mut self, now: Instant) {
        for index in 0..self.outputs.len() {
            let output = &self.outputs[index];
            let wanted = self.wanted(output.signal);
            let change = if wanted && !output.on {
                Some(true)
            } else if !wanted && output.on && now >= output.on_since + self.min_hold {
                Some(false)
            } else {
                None
            };
            if let Some(on) = change {
                let output = &mut self.outputs[index];
                output.on = on;
                if on {
                    output.on_since = now;
                }
                let (line, level) = (output.line, if on { self.on_level } else { self.off_level });
                self.write(line, level, now);
            }
        }
    }

    fn write(&mut self, line: u32, level: Level, at: Instant) {
        if let Err(e) = self.pins.set(line, level, at) {
            log::error!("GPIO: line {line}: {e}");
            self.failed_writes += 1;
        }
    }
}

impl Sink for GpioSink {
    fn name(&self) -> &'static str {
        "gpio"
    }

    fn events(&mut self, events: &[TrackEvent], now: Instant) {
        self.presence.apply(events);
        self.refresh(now);
    }

    fn stats(&mut self, _stats: &Stats) {}

    fn tick(&mut self, now: Instant) {
        self.refresh(now);
    }

    /// Drives every pin to its inactive level, hold time or not.
    fn shutdown(&mut self) {
        if std::mem::replace(&mut self.shut_down, true) {
            return;
        }
        let now = Instant::now();
        for index in 0..self.outputs.len() {
            self.outputs[index].on = false;
            self.write(self.outputs[index].line, self.off_level, now);
        }
    }

    fn dropped(&self) -> u64 {
        self.failed_writes
    }
}

impl Drop for GpioSink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_config_names_signals_and_rejects_unknown_ones() {
        let config: GpioConfig = toml::from_str(
            r#"
            enabled = true
            backend = "rppal"
            active_low = true
            [pins]
            face_present = 17
            happiness = 27
            "#,
        )
        .unwrap();
        assert_eq!(config.backend, GpioBackend::Rppal);
        assert_eq!(config.pins[&PinSignal::FacePresent], 17);
        assert_eq!(
            config.pins[&PinSignal::Expression(Expression::Happiness)],
            27
        );
        assert_eq!(config.safe_levels(), [(17, Level::High), (27, Level::High)]);

        let error = toml::from_str::<GpioConfig>("[pins]\nhappy = 4").unwrap_err();
        assert!(
            error.to_string().contains("unknown gpio signal `happy`"),
            "{error}"
        );
        let error = toml::from_str::<GpioConfig>("backend = \"sysfs\"").unwrap_err();
        assert!(error.to_string().contains("sysfs"), "{error}");
        let error = toml::from_str::<GpioConfig>("min_hold = 5").unwrap_err();
        assert!(error.to_string().contains("unknown field"), "{error}");
    }

    #[test]
    fn a_line_serves_one_signal() {
        let config: GpioConfig = toml::from_str("[pins]\nanger = 5\nfear = 5").unwrap();
        let error = config.check().unwrap_err().to_string();
        assert_eq!(error, "line 5 is given to both `anger` and `fear`");
        assert!(matches!(
            GpioConfig::default().check(),
            Err(GpioError::NoPins)
        ));
    }

    #[test]
    fn signal_names_round_trip() {
        for name in ["face_present", "anger", "surprise"] {
            assert_eq!(name.parse::<PinSignal>().unwrap().to_string(), name);
        }
    }
}
