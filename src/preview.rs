//! `fer-edge preview`, the installer's aiming tool: opens the configured
//! source (the camera, or a file source), runs the detector on a number of
//! frames and writes each one annotated (boxes, expression and score, the
//! frame rate in the top-left corner) to a directory, so whoever mounts the
//! camera sees what it sees. A command of its own, never part of the
//! service: nothing is signalled and nothing leaves the device.

use crate::annotate::{annotated_frame, draw_caption, save_annotated};
use crate::capture::Capture;
use crate::config::Config;
use crate::detector::{DetectError, Detector};
use crate::preprocess::Frame;
use crate::service::source_name;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long to wait for a frame beyond the camera's own frame timeout
/// before giving up (a missing camera is retried in the background).
const SOURCE_GRACE: Duration = Duration::from_secs(10);

/// One written preview frame.
#[derive(Debug)]
pub struct PreviewFrame {
    pub path: PathBuf,
    pub faces: usize,
}

/// Writes up to `frames` annotated frames of `config`'s source to `dir`
/// (`preview-0001.png`, ...); fewer if a file source ends first.
pub fn run(
    config: &Config,
    detector: &mut Detector,
    frames: usize,
    dir: &Path,
) -> anyhow::Result<Vec<PreviewFrame>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the preview directory {}", dir.display()))?;
    let source = source_name(&config.capture);
    let mut capture = Capture::start(&config.capture)?;
    let patience = Duration::from_millis(config.capture.frame_timeout_ms) + SOURCE_GRACE;
    let started = Instant::now();
    let mut written = Vec::with_capacity(frames);
    let mut rgb = Vec::new();
    while written.len() < frames {
        let Some(captured) = capture.latest(patience) else {
            if capture.is_finished() {
                break;
            }
            bail!(
                "no frame from {source} within {} s (is the camera in use, by the \
                 fer-edge service for one? see the capture warnings above)",
                patience.as_secs()
            );
        };
        let frame = Frame {
            format: captured.format,
            width: captured.width,
            height: captured.height,
            data: &captured.data,
        };
        let faces = match detector.detect(&frame) {
            Ok(faces) => faces,
            Err(DetectError::Preprocess(e)) => {
                log::warn!("preview: skipped an undecodable frame: {e}");
                continue;
            }
            Err(e) => return Err(e).context("inference failed"),
        };
        let mut image = annotated_frame(&frame, &faces, rgb)?;
        let done = written.len() + 1;
        let fps = done as f64 / started.elapsed().as_secs_f64();
        draw_caption(
            &mut image,
            &format!(
                "{fps:.1} fps  {}  {done}/{frames}",
                count_faces(faces.len())
            ),
        );
        let name = format!("preview-{done:04}");
        let path = save_annotated(&image, dir, Path::new(&name))?;
        rgb = image.into_raw();
        written.push(PreviewFrame {
            path,
            faces: faces.len(),
        });
    }
    capture.stop();
    if written.is_empty() {
        bail!("{source} gave no frame to preview");
    }
    Ok(written)
}

/// "1 face", "2 faces".
pub fn count_faces(count: usize) -> String {
    match count {
        1 => "1 face".into(),
        n => format!("{n} faces"),
    }
}
