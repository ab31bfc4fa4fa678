//! The service's one configuration file (`/etc/fer-edge/config.toml`).
//!
//! Every table has its defaults built in, so an empty file is a valid
//! config (a camera at `/dev/video0`, JSON lines on stdout). Unknown keys
//! are errors, at every level, so a typo cannot silently leave a default in
//! place; a parse error names the key and its line. [`Config::check`] then
//! checks what the types cannot (ranges, paths, topic names, pin maps)
//! without touching the camera, the broker or the pins. `config.example.toml`
//! at the top of the repository documents every key.

use crate::capture::CaptureConfig;
use crate::decode::DecodeOptions;
use crate::device::Device;
use crate::infer::{Model, ModelSource};
use crate::service::metrics::HttpConfig;
use crate::signal::{GpioConfig, LogConfig, MqttConfig, MqttError};
use crate::track::TrackerConfig;
use serde::{Deserialize, Serialize};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

/// Where the service looks for its config when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/fer-edge/config.toml";

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub detector: DetectorConfig,
    pub capture: CaptureConfig,
    pub tracker: TrackerConfig,
    pub log: LogConfig,
    pub mqtt: MqttConfig,
    pub gpio: GpioConfig,
    pub service: ServiceConfig,
    pub snapshot: SnapshotConfig,
    pub http: HttpConfig,
}

/// The `[detector]` table: the model and how it runs.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// An ONNX model file (with `fer_edge::SelectiveScan` nodes); without
    /// it, the model built into the binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
    /// `auto`, `cpu` or `cuda`; `auto` takes a usable CUDA GPU when the
    /// binary was built with the `cuda` feature.
    pub device: Device,
    /// Inference threads; 0 means one per core.
    pub threads: usize,
    /// Minimum face score (objectness x expression) to report; without it,
    /// the model file's own threshold, else 0.18 (the built-in model's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f32>,
    /// IoU above which overlapping boxes are merged into one face.
    pub nms_iou: f32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        let decode = DecodeOptions::default();
        DetectorConfig {
            model: None,
            device: Device::Auto,
            threads: 0,
            confidence: None,
            nms_iou: decode.nms_iou,
        }
    }
}

impl DetectorConfig {
    /// The model file named, else the built-in model.
    pub fn model_source(&self) -> ModelSource {
        ModelSource::from_file(self.model.as_deref())
    }

    /// How to decode `model`'s outputs: this table's thresholds, the
    /// model's own confidence where the table sets none.
    pub fn decode_options(&self, model: &Model) -> DecodeOptions {
        let for_model = DecodeOptions::for_model(model);
        DecodeOptions {
            confidence: self.confidence.unwrap_or(for_model.confidence),
            nms_iou: self.nms_iou,
            class_agnostic: true,
        }
    }

    /// Threads to use: `threads`, or one per core.
    pub fn thread_count(&self) -> usize {
        if self.threads > 0 {
            return self.threads;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// The `[service]` table: the main loop's housekeeping.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Seconds between counter reports (the `stats` topic and the status file).
    pub stats_interval_s: f64,
    /// Where the counters are written for `fer-edge status` (atomically, at
    /// every report). Empty: not written.
    pub status_file: PathBuf,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            stats_interval_s: 60.0,
            status_file: PathBuf::from("/run/fer-edge/status.json"),
        }
    }
}

/// The `[snapshot]` table. Off by default: frames never leave the device and
/// are never written to disk unless this is turned on.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Save the frame, with boxes and labels drawn, when a face appears or
    /// changes expression.
    pub enabled: bool,
    /// Directory of the snapshots (PNG).
    pub dir: PathBuf,
    /// At most one snapshot per this many seconds.
    pub min_interval_s: f64,
    /// Snapshots kept; the oldest are deleted beyond this.
    pub keep: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            enabled: false,
            dir: PathBuf::from("/var/lib/fer-edge/snapshots"),
            min_interval_s: 10.0,
            keep: 100,
        }
    }
}

/// Why a config cannot be used. The message names the file and the key,
/// with its line when the file sets it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}{}: {invalid}", line.map(|n| format!(", line {n}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        invalid: InvalidKey,
    },
}

/// A value a key cannot take: the key's dotted path (`capture.fps`) and why.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct InvalidKey {
    pub key: &'static str,
    pub message: String,
}

impl InvalidKey {
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        InvalidKey {
            key,
            message: message.into(),
        }
    }
}

/// `Ok` when `value` of `key` lies in `range` (NaN never does): every
/// numeric key has one, so no accepted value can overflow a time or a
/// count where `run` uses it.
pub fn in_range<T: PartialOrd + std::fmt::Debug>(
    key: &'static str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), InvalidKey> {
    if range.contains(&value) {
        Ok(())
    } else {
        // Debug: 1e300 rather than 301 digits.
        Err(InvalidKey::new(
            key,
            format!(
                "{value:?} is not in [{:?}, {:?}]",
                range.start(),
                range.end()
            ),
        ))
    }
}

/// Most inference threads: the unit's `TasksMax=64` must leave room for the
/// service's own threads (capture, MQTT, HTTP) and the runtime's.
pub const MAX_THREADS: usize = 32;
/// Bounds of the report and snapshot intervals, seconds: a day at most.
const MAX_INTERVAL_S: f64 = 86_400.0;

/// The line (from 1) of the dotted `key` in the TOML `text`, if it sets it.
fn line_of(text: &str, key: &str) -> Option<usize> {
    let root = toml::de::DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let (name, value) = table.get_key_value(part)?;
        if parts.peek().is_none() {
            return Some(text[..name.span().start].matches('\n').count() + 1);
        }
        table = value.get_ref().as_table()?;
    }
    None
}

impl Config {
    /// Reads and parses the file at `path`, applies `overrides` (see
    /// [`Config::with_overrides`]) and checks the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
        let config = Config::read(path, overrides)?;
        config.check(path)?;
        Ok(config)
    }

    /// [`Config::load`] without the final [`Config::check`].
    pub fn read(path: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)?.with_overrides(overrides, path)
    }

    /// Parses `text` (the contents of `path`, named in errors) without the
    /// semantic checks of [`Config::check`].
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Applies `key=value` overrides (dotted keys, TOML values; a value that
    /// is not TOML is taken as a string), e.g. `capture.fps=5` or
    /// `mqtt.host=broker.local`.
    pub fn with_overrides(self, overrides: &[String], path: &Path) -> Result<Config, ConfigError> {
        if overrides.is_empty() {
            return Ok(self);
        }
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_owned(),
            message,
        };
        let mut table = toml::Table::try_from(&self).map_err(|e| parse_error(e.to_string()))?;
        for entry in overrides {
            let (key, value) = entry
                .split_once('=')
                .ok_or_else(|| parse_error(format!("--set {entry:?}: expected KEY=VALUE")))?;
            let value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.to_string()));
            let mut parts: Vec<&str> = key.trim().split('.').collect();
            let last = parts.pop().unwrap_or_default();
            let mut cursor = &mut table;
            for part in parts {
                cursor = cursor
                    .entry(part)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| parse_error(format!("--set {key}: `{part}` is not a table")))?;
            }
            cursor.insert(last.to_string(), value);
        }
        Config::deserialize(table).map_err(|e| parse_error(format!("--set: {e}")))
    }

    /// Checks what the types cannot, without opening devices or connections:
    /// every table, enabled or not (a bad value must not wait for the day
    /// its table is turned on). The error names the key, and its line when
    /// the file at `path` sets it.
    pub fn check(&self, path: &Path) -> Result<(), ConfigError> {
        self.check_keys().map_err(|invalid| ConfigError::Invalid {
            path: path.to_owned(),
            line: std::fs::read_to_string(path)
                .ok()
                .and_then(|text| line_of(&text, invalid.key)),
            invalid,
        })
    }

    fn check_keys(&self) -> Result<(), InvalidKey> {
        self.detector.check()?;
        self.capture.check()?;
        self.tracker.check()?;
        // The log sink uses the MQTT topic names even when MQTT is off.
        self.mqtt.check().map_err(|e| match e {
            MqttError::OutOfRange(invalid) => invalid,
            other => InvalidKey::new("mqtt", other.to_string()),
        })?;
        if self.gpio.enabled || !self.gpio.pins.is_empty() {
            self.gpio
                .check()
                .map_err(|e| InvalidKey::new("gpio.pins", e.to_string()))?;
        }
        self.gpio.check_hold()?;
        self.service.check()?;
        self.snapshot.check()
    }
}

impl DetectorConfig {
    fn check(&self) -> Result<(), InvalidKey> {
        in_range("detector.threads", self.threads, 0..=MAX_THREADS)?;
        if let Some(confidence) = self.confidence {
            in_range("detector.confidence", confidence, 0.0..=1.0)?;
        }
        in_range("detector.nms_iou", self.nms_iou, 0.0..=1.0)?;
        match self.model.as_ref().filter(|m| !m.is_file()) {
            Some(model) => Err(InvalidKey::new(
                "detector.model",
                format!("{} is not a file", model.display()),
            )),
            None => Ok(()),
        }
    }
}

impl ServiceConfig {
    fn check(&self) -> Result<(), InvalidKey> {
        in_range(
            "service.stats_interval_s",
            self.stats_interval_s,
            0.1..=MAX_INTERVAL_S,
        )
    }
}

impl SnapshotConfig {
    fn check(&self) -> Result<(), InvalidKey> {
        in_range(
            "snapshot.min_interval_s",
            self.min_interval_s,
            0.0..=MAX_INTERVAL_S,
        )?;
        in_range("snapshot.keep", self.keep, 1..=100_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "config.toml";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new(PATH))
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn a_misspelt_key_is_named_with_its_line() {
        let err = parse("[mqtt]\nenabled = true\nhots = \"broker\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("hots"), "{err}");
        assert!(err.contains(PATH), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_in_nested_tables() {
        for text in [
            "[capture.reconnect]\ninitial_delay = 5\n",
            "[mqtt.tls]\nca = \"/x\"\n",
            "[tracker]\nlost_after = 2.0\n",
            "[snapshot]\nenable = true\n",
            "unknown_table_key = 1\n",
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains("unknown field"), "{text}: {err}");
        }
    }

    #[test]
    fn a_wrong_type_is_named() {
        let err = parse("[detector]\nthreads = \"two\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("threads"), "{err}");
    }

    #[test]
    fn overrides_replace_values_and_unknown_ones_are_named() {
        let config = parse("[capture]\nfps = 15.0\n").unwrap();
        let overridden = config
            .clone()
            .with_overrides(
                &[
                    "capture.fps=5".into(),
                    "mqtt.host=broker.local".into(),
                    "mqtt.enabled=true".into(),
                ],
                Path::new(PATH),
            )
            .unwrap();
        assert_eq!(overridden.capture.fps, 5.0);
        assert_eq!(overridden.mqtt.host, "broker.local");
        assert!(overridden.mqtt.enabled);
        let err = config
            .with_overrides(&["capture.fsp=5".into()], Path::new(PATH))
            .unwrap_err()
            .to_string();
        assert!(err.contains("fsp"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_key() {
        let mut config = Config::default();
        config.detector.confidence = Some(1.5);
        let err = config.check(Path::new(PATH)).unwrap_err().to_string();
        assert!(err.contains("detector.confidence"), "{err}");

        config.detector.confidence = Some(0.3);
        config.tracker.smoothing = 0.0;
        let err = config.check(Path::new(PATH)).unwrap_err().to_string();
        assert!(err.contains("tracker"), "{err}");

        config.tracker = TrackerConfig::default();
        config.gpio.enabled = true;
        let err = config.check(Path::new(PATH)).unwrap_err().to_string();
        assert!(err.contains("gpio") && err.contains("pins"), "{err}");

        config.gpio.enabled = false;
        config.mqtt.enabled = true;
        config.mqtt.password = Some("secret".into());
        let err = config.check(Path::new(PATH)).unwrap_err().to_string();
        assert!(err.contains("mqtt") && err.contains("username"), "{err}");
    }

    /// The values that made `run` panic before every key had a range, in
    /// enabled and disabled tables alike: refused, naming key and line.
    #[test]
    fn out_of_range_values_are_refused_with_key_and_line() {
        let dir = std::env::temp_dir().join(format!("fer-edge-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        for (text, key, line) in [
            (
                "[service]\nstats_interval_s = 1e300\n",
                "service.stats_interval_s",
                2,
            ),
            (
                "# a comment\n[service]\nstats_interval_s = 9223372036854775808.0\n",
                "service.stats_interval_s",
                3,
            ),
            ("[capture]\nwidth = 320\nfps = 1e-300\n", "capture.fps", 3),
            ("[capture]\nfps = 5e-324\n", "capture.fps", 2),
            (
                "[snapshot]\nmin_interval_s = 1e300\n",
                "snapshot.min_interval_s",
                2,
            ),
            ("[detector]\nthreads = 100\n", "detector.threads", 2),
            ("[detector]\nthreads = 3000\n", "detector.threads", 2),
            (
                "[capture.reconnect]\nmax_delay_ms = 10\n",
                "capture.reconnect.max_delay_ms",
                2,
            ),
            ("[tracker]\nlost_after_s = inf\n", "tracker.lost_after_s", 2),
            (
                "[gpio]\nmin_hold_ms = 18446744073709551615\n",
                "gpio.min_hold_ms",
                2,
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Config::load(&path, &[]).unwrap_err().to_string();
            assert!(
                err.contains(&format!("line {line}: `{key}`")),
                "{text}: {err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn disabled_tables_are_checked_too() {
        let mut config = Config::default();
        config.mqtt.qos = 3;
        assert!(!config.mqtt.enabled);
        let err = config.check(Path::new(PATH)).unwrap_err().to_string();
        assert!(err.contains("qos"), "{err}");
        let mut config = Config::default();
        config.snapshot.keep = 0;
        let err = config.check(Path::new(PATH)).unwrap_err().to_string();
        assert!(err.contains("snapshot.keep"), "{err}");
        let mut config = Config::default();
        let happiness =
            crate::signal::gpio::PinSignal::Expression(crate::face::Expression::Happiness);
        config
            .gpio
            .pins
            .insert(crate::signal::gpio::PinSignal::FacePresent, 17);
        config.gpio.pins.insert(happiness, 17);
        let err = config.check(Path::new(PATH)).unwrap_err().to_string();
        assert!(
            err.contains("gpio.pins") && err.contains("line 17"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_model_is_named() {
        let mut config = Config::default();
        config.detector.model = Some(PathBuf::from("models/no-such-model.onnx"));
        let err = config.check(Path::new(PATH)).unwrap_err().to_string();
        assert!(
            err.contains("detector.model") && err.contains("no-such-model"),
            "{err}"
        );
    }

    #[test]
    fn the_demo_config_of_the_readme_is_valid() {
        let demo = Config::load(Path::new("samples/demo.toml"), &[]).unwrap();
        assert_eq!(
            demo.capture.path.as_deref(),
            Some(Path::new("samples/sequence"))
        );
    }

    /// The key paths of a TOML table, e.g. `mqtt.tls.ca_file`.
    fn key_paths(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = format!("{prefix}{key}");
            match value {
                toml::Value::Table(inner) if !path.ends_with(".pins") => {
                    key_paths(inner, &format!("{path}."), out)
                }
                _ => out.push(path),
            }
        }
    }

    /// `config.example.toml` parses, its active keys are the defaults, and it
    /// documents every key the binary knows (optional ones commented out as
    /// `# key = value`).
    #[test]
    fn the_example_documents_every_key_with_its_default() {
        let example = include_str!("../config.example.toml");
        let active = parse(example).unwrap();
        let expected = Config::default();
        assert_eq!(
            active, expected,
            "the example's active values must be the defaults"
        );

        let uncommented: String = example
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest)
                    if rest.contains(" = ")
                        && rest
                            .split(" = ")
                            .next()
                            .unwrap()
                            .trim()
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    rest
                }
                Some(rest) if rest.starts_with('[') && rest.ends_with(']') => rest,
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let documented: toml::Table = toml::from_str(&uncommented).unwrap();
        parse(&uncommented).expect("every commented-out key is a valid key");
        let mut documented_keys = Vec::new();
        key_paths(&documented, "", &mut documented_keys);

        let mut with_options = Config::default();
        with_options.capture.path = Some("x".into());
        with_options.mqtt.port = Some(1883);
        with_options.mqtt.client_id = Some("x".into());
        with_options.mqtt.device_id = Some("x".into());
        with_options.mqtt.username = Some("x".into());
        with_options.mqtt.password = Some("x".into());
        with_options.mqtt.tls = Some(crate::signal::TlsConfig {
            client_cert: Some("x".into()),
            client_key: Some("x".into()),
            ..Default::default()
        });
        let known: toml::Table = toml::from_str(&toml::to_string(&with_options).unwrap()).unwrap();
        let mut known_keys = Vec::new();
        key_paths(&known, "", &mut known_keys);
        let missing: Vec<_> = known_keys
            .iter()
            .filter(|key| !documented_keys.contains(key))
            .collect();
        assert!(missing.is_empty(), "config.example.toml lacks {missing:?}");
    }
}
