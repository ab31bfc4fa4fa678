//! The status file: the service's counters, rewritten atomically at every
//! report, and read back by `fer-edge status`.

use crate::signal::Stats;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// What `fer-edge status` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `running`, or `stopped` once the service has exited.
    pub state: String,
    pub pid: u32,
    /// Unix times, seconds.
    pub started_at: f64,
    pub updated_at: f64,
    /// The model's source, e.g. "built-in model fer-yolo-mamba-nano.onnx".
    pub model: String,
    /// Where the network runs (`cpu` or `cuda`), as loaded.
    pub device: String,
    /// The frame source, and what a camera negotiated.
    pub source: String,
    /// Whether the source is open: false while a camera is missing or
    /// failing (`stats.capture` says since when and why) and once a file
    /// source has ended.
    pub capture_alive: bool,
    /// Faces on screen now.
    pub faces_visible: usize,
    pub stats: serde_json::Value,
}

impl Status {
    pub fn with_stats(mut self, stats: &Stats) -> Self {
        self.stats = serde_json::to_value(stats).unwrap_or_default();
        self
    }
}

/// Writes `status` to `path` through a temporary file and a rename, so a
/// reader never sees half a file.
pub fn write(path: &Path, status: &Status) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let partial = dir.join(format!(".{name}.partial"));
    let json = serde_json::to_vec_pretty(status)?;
    // Counters only, readable by anyone (the service's umask is 0077).
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    file.write_all(&json)
        .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(0o644)))
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Reads the status file at `path`.
pub fn read(path: &Path) -> anyhow::Result<Status> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the status file {} (is the service running, and is this its \
             `service.status_file`?)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a status file", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_survives_the_round_trip_and_leaves_no_partial_file() {
        let dir = std::env::temp_dir().join(format!("fer-edge-status-{}", std::process::id()));
        let path = dir.join("status.json");
        let stats = Stats {
            frames: 42,
            ..Default::default()
        };
        let status = Status {
            state: "running".into(),
            pid: 7,
            started_at: 1.0,
            updated_at: 2.0,
            model: "m.onnx".into(),
            device: "cpu".into(),
            source: "image_dir samples".into(),
            capture_alive: true,
            faces_visible: 1,
            stats: serde_json::Value::Null,
        }
        .with_stats(&stats);
        write(&path, &status).unwrap();
        write(&path, &status).unwrap();
        assert_eq!(read(&path).unwrap(), status);
        assert_eq!(read(&path).unwrap().stats["frames"], 42);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["status.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(read(&path).unwrap_err().to_string().contains("status file"));
    }
}
