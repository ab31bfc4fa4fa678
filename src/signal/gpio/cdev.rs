//! Character-device backend: any Linux board's GPIO through
//! `/dev/gpiochipN` (gpiocdev, uAPI v2 or v1), e.g. a Jetson's header.

use super::{GpioError, Level, OutputPins};
use gpiocdev::line::Value;
use gpiocdev::Request;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Output lines of one chip, held in one line request.
pub struct CdevPins {
    chip: PathBuf,
    request: Request,
}

impl CdevPins {
    /// Requests each `line` offset of `chip` as an output at its level. The
    /// kernel releases the lines when the request is dropped.
    pub fn open(chip: &Path, lines: &[(u32, Level)]) -> Result<Self, GpioError> {
        let mut builder = Request::builder();
        builder.on_chip(chip).with_consumer("fer-edge");
        for &(line, level) in lines {
            builder.with_line(line).as_output(value(level));
        }
        let request = builder.request().map_err(|source| GpioError::CdevRequest {
            chip: chip.to_path_buf(),
            lines: lines.iter().map(|&(line, _)| line).collect(),
            source,
        })?;
        Ok(CdevPins {
            chip: chip.to_path_buf(),
            request,
        })
    }
}

/// The line value of a level (lines are requested active-high, so active is
/// high; `active_low` is applied by the sink for every backend alike).
fn value(level: Level) -> Value {
    match level {
        Level::Low => Value::Inactive,
        Level::High => Value::Active,
    }
}

impl OutputPins for CdevPins {
    fn set(&mut self, line: u32, level: Level, _at: Instant) -> Result<(), GpioError> {
        self.request
            .set_value(line, value(level))
            .map_err(|source| GpioError::CdevSet {
                chip: self.chip.clone(),
                line,
                source,
            })
    }
}
