//! Capped exponential backoff between attempts to reopen a failed source.

use super::ReconnectConfig;
use std::time::Duration;

/// The delays before successive retries: the initial delay, doubling after
/// each failure up to the cap, and back to the initial delay once the
/// source delivers frames again.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(config: &ReconnectConfig) -> Self {
        Backoff {
            initial: config.initial_delay(),
            max: config.max_delay(),
            next: config.initial_delay(),
        }
    }

    /// The delay before the next retry; the one after it is doubled, capped.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// The source works again: the next failure starts from the initial delay.
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(&ReconnectConfig {
            initial_delay_ms: 250,
            max_delay_ms: 1500,
        });
        let delays: Vec<u128> = (0..6).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 1500, 1500, 1500]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(250));
    }
}
