//! rppal backend: Raspberry Pi GPIO (BCM numbering) through rppal, which
//! finds the Pi model (including the Pi 5's RP1) by itself.

use super::{GpioError, Level, OutputPins};
use ::rppal::gpio::{Gpio, OutputPin};
use std::collections::HashMap;
use std::time::Instant;

/// Output pins opened with rppal.
pub struct RppalPins {
    pins: HashMap<u32, OutputPin>,
}

impl RppalPins {
    /// Claims each BCM `line` as an output at its given level. The pins keep
    /// driving their last level after exit (no reset to input on drop), so a
    /// relay input does not float.
    pub fn open(lines: &[(u32, Level)]) -> Result<Self, GpioError> {
        let gpio = Gpio::new()?;
        let mut pins = HashMap::new();
        for &(line, level) in lines {
            let bcm = u8::try_from(line).map_err(|_| GpioError::NotBcm(line))?;
            let pin = gpio.get(bcm)?;
            let mut output = match level {
                Level::Low => pin.into_output_low(),
                Level::High => pin.into_output_high(),
            };
            output.set_reset_on_drop(false);
            pins.insert(line, output);
        }
        Ok(RppalPins { pins })
    }
}

impl OutputPins for RppalPins {
    fn set(&mut self, line: u32, level: Level, _at: Instant) -> Result<(), GpioError> {
        let pin = self.pins.get_mut(&line).ok_or(GpioError::NotOpened(line))?;
        match level {
            Level::Low => pin.set_low(),
            Level::High => pin.set_high(),
        }
        Ok(())
    }
}
