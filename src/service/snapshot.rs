//! Snapshots, off by default: the frame, with boxes and labels drawn, saved
//! as PNG when a face appears or changes expression, at most one per
//! `min_interval_s`, keeping the newest `keep`.

use crate::annotate::{annotated_frame, save_annotated};
use crate::config::SnapshotConfig;
use crate::face::Face;
use crate::preprocess::Frame;
use crate::track::{EventKind, TrackEvent};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

pub struct Snapshots {
    dir: PathBuf,
    min_interval: Duration,
    keep: usize,
    last: Option<Instant>,
    rgb: Vec<u8>,
}

impl Snapshots {
    /// The snapshots of the `[snapshot]` table, when it is enabled (with a
    /// warning: frames with faces are written to disk).
    pub fn from_config(config: &SnapshotConfig) -> anyhow::Result<Option<Self>> {
        if !config.enabled {
            return Ok(None);
        }
        log::warn!(
            "snapshots are on: frames with faces are written to {}",
            config.dir.display()
        );
        Snapshots::new(config).map(Some)
    }

    /// Creates the directory (the service fails at start, not at the first
    /// face, when it cannot).
    pub fn new(config: &SnapshotConfig) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.dir)
            .with_context(|| format!("snapshot.dir {}", config.dir.display()))?;
        Ok(Snapshots {
            dir: config.dir.clone(),
            min_interval: Duration::from_secs_f64(config.min_interval_s),
            keep: config.keep,
            last: None,
            rgb: Vec::new(),
        })
    }

    /// Saves `frame` if `events` has a `new` or `update` and the last
    /// snapshot is old enough; returns the file written.
    pub fn on_frame(
        &mut self,
        frame: &Frame,
        faces: &[Face],
        events: &[TrackEvent],
        now: Instant,
    ) -> anyhow::Result<Option<PathBuf>> {
        let Some(event) = events.iter().find(|e| e.kind != EventKind::End) else {
            return Ok(None);
        };
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.min_interval)
        {
            return Ok(None);
        }
        self.last = Some(now);
        let image =
            annotated_frame(frame, faces, std::mem::take(&mut self.rgb)).context("snapshot")?;
        let unix_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let name = format!("{unix_ms:013}-face{}-{}", event.id, event.expression.name());
        let written = save_annotated(&image, &self.dir, Path::new(&name))?;
        self.rgb = image.into_raw();
        self.prune()?;
        Ok(Some(written))
    }

    /// Deletes the oldest snapshots beyond `keep` (only files named like ours).
    fn prune(&self) -> anyhow::Result<()> {
        let mut ours: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| is_snapshot(path))
            .collect();
        ours.sort();
        let excess = ours.len().saturating_sub(self.keep);
        for old in &ours[..excess] {
            std::fs::remove_file(old)
                .with_context(|| format!("cannot delete {}", old.display()))?;
        }
        Ok(())
    }
}

/// `<13 digits>-face<id>-<expression>.png`
fn is_snapshot(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    name.ends_with(".png")
        && name.len() > 14
        && name.as_bytes()[..13].iter().all(u8::is_ascii_digit)
        && name[13..].starts_with("-face")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face::Expression;
    use crate::preprocess::PixelFormat;
    use crate::signal::test_events::event;

    #[test]
    fn saves_on_new_faces_at_most_once_per_interval_and_keeps_the_newest() {
        let dir = std::env::temp_dir().join(format!("fer-edge-snap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("notes.png"), b"not ours").unwrap();
        let config = SnapshotConfig {
            enabled: true,
            dir: dir.clone(),
            min_interval_s: 1.0,
            keep: 2,
        };
        let mut snapshots = Snapshots::new(&config).unwrap();
        let pixels = vec![90u8; 64 * 48];
        let frame = Frame {
            format: PixelFormat::Grey8,
            width: 64,
            height: 48,
            data: &pixels,
        };
        let new = [event(EventKind::New, 1, Expression::Happiness)];
        let end = [event(EventKind::End, 1, Expression::Happiness)];
        let t0 = Instant::now();
        let mut written = Vec::new();
        for (i, events) in [&new[..], &new, &end, &new, &new].iter().enumerate() {
            let at = t0 + Duration::from_millis(600 * i as u64);
            if let Some(path) = snapshots.on_frame(&frame, &[], events, at).unwrap() {
                written.push(path);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // Frames at 0, 0.6 (too soon), 1.2 (end only), 1.8, 2.4 (too soon).
        assert_eq!(written.len(), 2, "{written:?}");
        let image = image::open(&written[0]).unwrap();
        assert_eq!((image.width(), image.height()), (64, 48));
        assert!(written[0]
            .to_string_lossy()
            .ends_with("-face1-happiness.png"));
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&"notes.png".to_string()));

        // A third snapshot pushes out the oldest of ours, not the user's file.
        let later = t0 + Duration::from_secs(10);
        let third = snapshots
            .on_frame(&frame, &[], &new, later)
            .unwrap()
            .unwrap();
        assert!(third.exists());
        assert!(!written[0].exists());
        assert!(dir.join("notes.png").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
