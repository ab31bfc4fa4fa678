//! What the file sources share: pacing to a frame rate, numbering frames,
//! and starting again at the end when asked to repeat.

use super::{CaptureConfig, CaptureError, CapturedFrame, FrameSource};
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

/// A recording read front to back: the part that differs between file sources.
pub(crate) trait Recording: Sized + Send {
    /// Opens the recording that `config` names, at its first frame.
    fn open(config: &CaptureConfig) -> Result<Self, CaptureError>;

    /// The next frame, numbered `sequence`, or `None` at the end. A broken
    /// frame is a [`CaptureError::Corrupt`] naming the file and frame.
    fn read_frame(&mut self, sequence: u64) -> Result<Option<CapturedFrame>, CaptureError>;

    /// What is read, e.g. `MJPEG file clip.mjpeg`.
    fn describe(&self) -> String;
}

/// A [`Recording`] as a [`FrameSource`]: paced, numbered, optionally looped.
pub(crate) struct Replay<R> {
    config: CaptureConfig,
    recording: R,
    pacer: Pacer,
    sequence: u64,
    good_frames_this_pass: u64,
}

impl<R: Recording> Replay<R> {
    pub(crate) fn open(config: &CaptureConfig) -> Result<Self, CaptureError> {
        Ok(Replay {
            config: config.clone(),
            recording: R::open(config)?,
            pacer: Pacer::new(config.replay_period()),
            sequence: 0,
            good_frames_this_pass: 0,
        })
    }

    /// At the end: starts again from the first frame if repeating.
    fn rewind(&mut self) -> Result<(), CaptureError> {
        if !self.config.repeat {
            return Err(CaptureError::EndOfStream);
        }
        if self.good_frames_this_pass == 0 {
            return Err(CaptureError::Unavailable(format!(
                "{} holds no readable frame to repeat",
                self.recording.describe()
            )));
        }
        self.recording = R::open(&self.config)?;
        self.good_frames_this_pass = 0;
        Ok(())
    }
}

impl<R: Recording> FrameSource for Replay<R> {
    fn next_frame(&mut self) -> Result<CapturedFrame, CaptureError> {
        loop {
            match self.recording.read_frame(self.sequence) {
                Ok(Some(frame)) => {
                    self.sequence += 1;
                    self.good_frames_this_pass += 1;
                    return Ok(frame);
                }
                Err(CaptureError::Corrupt(reason)) => {
                    self.sequence += 1;
                    return Err(CaptureError::Corrupt(reason));
                }
                Err(error) => return Err(error),
                Ok(None) => self.rewind()?,
            }
        }
    }

    fn describe(&self) -> String {
        self.recording.describe()
    }

    fn next_due(&mut self) -> Option<Instant> {
        self.pacer.next_due()
    }
}

/// Opens a file for reading; the error names it as `what`.
pub(crate) fn open_file(path: &Path, what: &str) -> Result<File, CaptureError> {
    File::open(path).map_err(|e| {
        CaptureError::Unavailable(format!("cannot open {what} {}: {e}", path.display()))
    })
}

/// Spaces frames one `period` apart; a caller that falls behind is not
/// made to catch up in a burst.
#[derive(Debug)]
struct Pacer {
    period: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer with `period` between frames; `None` never waits.
    fn new(period: Option<Duration>) -> Self {
        Pacer { period, next: None }
    }

    /// When the next frame is due (now, for the first or a late one).
    fn next_due(&mut self) -> Option<Instant> {
        let period = self.period?;
        let now = Instant::now();
        let due = self.next.filter(|&due| due > now).unwrap_or(now);
        self.next = Some(due + period);
        Some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_frames_are_due_one_period_apart_and_late_ones_at_once() {
        let period = Duration::from_millis(20);
        let mut pacer = Pacer::new(Some(period));
        let first = pacer.next_due().unwrap();
        assert_eq!(pacer.next_due(), Some(first + period));
        assert_eq!(pacer.next_due(), Some(first + 2 * period));
        std::thread::sleep(3 * period);
        let late = pacer.next_due().unwrap();
        assert!(late >= first + 3 * period && late <= Instant::now());
        assert_eq!(Pacer::new(None).next_due(), None);
    }
}
