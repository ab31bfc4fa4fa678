//! Talking to systemd (`Type=notify`): `READY=1` once the service works,
//! `STATUS=` lines for `systemctl status`, `WATCHDOG=1` pets and
//! `STOPPING=1`. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use sd_notify::NotifyState;
use std::time::{Duration, Instant};

/// The notify socket and the watchdog interval systemd asked for.
pub struct Systemd {
    /// `WatchdogSec` of the unit, when it set one.
    watchdog: Option<Duration>,
    last_pet: Option<Instant>,
}

impl Systemd {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`) from the environment.
    pub fn from_env() -> Self {
        let mut usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| Duration::from_micros(usec))
            .filter(|interval| !interval.is_zero());
        if let Some(interval) = watchdog {
            log::info!("systemd watchdog: every {interval:?}");
        }
        Systemd {
            watchdog,
            last_pet: None,
        }
    }

    /// The service is up and reading frames.
    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A line for `systemctl status`.
    pub fn status(&self, status: &str) {
        send(&[NotifyState::Status(status)]);
    }

    /// Pets the watchdog if a quarter of its interval has passed since the
    /// last pet (so a late frame or two never lets it fire).
    pub fn pet(&mut self, now: Instant) {
        let Some(interval) = self.watchdog else {
            return;
        };
        if self
            .last_pet
            .is_none_or(|last| now.duration_since(last) >= interval / 4)
        {
            send(&[NotifyState::Watchdog]);
            self.last_pet = Some(now);
        }
    }

    /// The service is reading its config again (`READY=1` follows).
    pub fn reloading(&self) {
        send(&[NotifyState::Reloading, NotifyState::Status("reloading")]);
    }

    /// The service is shutting down.
    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        log::warn!("systemd notify: {e}");
    }
}
