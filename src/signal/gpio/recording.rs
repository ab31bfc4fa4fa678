//! Recording backend: keeps every pin change with its time, for tests and
//! for checking a pin mapping without hardware.

use super::{GpioError, Level, OutputPins};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// One level change of one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinChange {
    pub at: Instant,
    pub line: u32,
    pub level: Level,
}

/// Records changes instead of driving pins. Clones share one record, so a
/// test keeps a clone after handing the backend to a sink.
#[derive(Clone, Debug, Default)]
pub struct RecordingPins {
    changes: Arc<Mutex<Vec<PinChange>>>,
}

impl RecordingPins {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every change so far, oldest first.
    pub fn changes(&self) -> Vec<PinChange> {
        self.changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl OutputPins for RecordingPins {
    fn set(&mut self, line: u32, level: Level, at: Instant) -> Result<(), GpioError> {
        self.changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(PinChange { at, line, level });
        Ok(())
    }
}
