//! The capture thread of the kiosk service: reads a source as fast as it
//! delivers, keeps the newest frame for the consumer, skips corrupt frames,
//! and reopens a failed or missing source with capped exponential backoff.

use super::latest::LatestFrame;
use super::reconnect::Backoff;
use super::{
    open, CaptureConfig, CaptureError, CapturedFrame, FrameSource, ReconnectConfig, StreamFormat,
};
use crate::unix_now;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What went through a [`Capture`] so far. Once stopped,
/// `frames` = frames taken + `dropped` + the one frame possibly left untaken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Good frames captured.
    pub frames: u64,
    /// Frames replaced by a newer one before the consumer took them.
    pub dropped: u64,
    /// Corrupt frames skipped.
    pub corrupt: u64,
    /// Times the source was opened again after it failed or was missing.
    pub reconnects: u64,
}

/// Whether the source is open, and since when and why it fails: what the
/// `stats` topic and the status file show of it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SourceState {
    pub open: bool,
    /// Unix time, seconds, of the first failure of the current outage.
    pub failing_since: Option<f64>,
    /// The latest failure of the current outage, e.g. `camera /dev/video0:
    /// cannot open the device: No such file or directory`.
    pub last_error: Option<String>,
}

/// A source that is failing or missing: since when (Unix seconds), and the
/// latest error.
struct Outage {
    since: f64,
    last_error: String,
}

/// While a source stays unavailable, one warning per this much time (the
/// first at once; the others at debug level).
const OUTAGE_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// A source read on its own thread; see the module documentation. Stops
/// (joining the thread) on [`Capture::stop`] or drop, within one frame time
/// of the source (a camera's `frame_timeout_ms` at worst).
pub struct Capture {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    mailbox: LatestFrame,
    corrupt: AtomicU64,
    reconnects: AtomicU64,
    /// A source is open (opened and not failed since).
    open: AtomicBool,
    stream_format: Mutex<Option<StreamFormat>>,
    /// Until when the capture thread is known to be working: the time of
    /// its last frame (good or corrupt) or open attempt, or the end of the
    /// backoff delay it is sleeping through.
    alive_until: Mutex<Option<Instant>>,
    /// Set from the first failure of a source until it opens again.
    outage: Mutex<Option<Outage>>,
    stop: StopSignal,
}

impl Shared {
    /// Notes a failure of the source; true if it is the first in a row.
    fn record_failure(&self, error: &str) -> bool {
        let mut outage = self.outage.lock().unwrap_or_else(PoisonError::into_inner);
        let first = outage.is_none();
        let since = outage.as_ref().map_or_else(unix_now, |o| o.since);
        *outage = Some(Outage {
            since,
            last_error: error.to_string(),
        });
        first
    }

    fn alive_until(&self, until: Instant) {
        *self
            .alive_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(until);
    }
}

impl Capture {
    /// Starts capturing from the source that `config` describes. Fails only
    /// on a config error: a camera that is missing now is retried in the
    /// background until it appears.
    pub fn start(config: &CaptureConfig) -> Result<Capture, CaptureError> {
        config.check()?;
        let source_config = config.clone();
        Capture::with_opener(move || open(&source_config), &config.reconnect)
    }

    /// Starts capturing from whatever `opener` opens; it is called again,
    /// after a backoff delay, each time it or the source it opened fails
    /// with [`CaptureError::Unavailable`].
    pub fn with_opener<F>(opener: F, reconnect: &ReconnectConfig) -> Result<Capture, CaptureError>
    where
        F: FnMut() -> Result<Box<dyn FrameSource>, CaptureError> + Send + 'static,
    {
        let shared = Arc::new(Shared::default());
        let backoff = Backoff::new(reconnect);
        let worker = thread::Builder::new()
            .name("fer-capture".into())
            .spawn({
                let shared = shared.clone();
                move || run(opener, backoff, &shared)
            })
            .map_err(|e| {
                CaptureError::Unavailable(format!("cannot start the capture thread: {e}"))
            })?;
        Ok(Capture {
            shared,
            worker: Some(worker),
        })
    }

    /// The newest frame not yet taken, waiting up to `timeout` for one.
    /// `None` on timeout, or at once once the capture has finished.
    pub fn latest(&self, timeout: Duration) -> Option<CapturedFrame> {
        self.shared.mailbox.take(timeout)
    }

    pub fn stats(&self) -> CaptureStats {
        let (frames, dropped) = self.shared.mailbox.counts();
        CaptureStats {
            frames,
            dropped,
            corrupt: self.shared.corrupt.load(Ordering::Relaxed),
            reconnects: self.shared.reconnects.load(Ordering::Relaxed),
        }
    }

    /// What the current source delivers, if it fixes a format (a camera:
    /// what was negotiated at the last (re)open).
    pub fn stream_format(&self) -> Option<StreamFormat> {
        *self
            .shared
            .stream_format
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the capture thread showed signs of life within `tolerance`:
    /// it read a frame (good or corrupt), tried to open the source, or is
    /// waiting out a reconnect delay. False when it is stuck (a driver call
    /// that never returns) or has finished. The service pets the systemd
    /// watchdog only while this holds, so a stuck camera gets the service
    /// restarted while an unplugged one is waited for.
    pub fn is_alive(&self, tolerance: Duration) -> bool {
        let until = *self
            .shared
            .alive_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        !self.is_finished() && until.is_some_and(|until| Instant::now() <= until + tolerance)
    }

    /// Whether a source is open now: false while a camera is missing or
    /// failing (between reconnect attempts) and once the capture finished.
    pub fn is_open(&self) -> bool {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Whether the source is open, and since when and why it has been
    /// failing or missing (nothing while it is open, or before its first
    /// failure).
    pub fn state(&self) -> SourceState {
        let outage = self
            .shared
            .outage
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        SourceState {
            open: self.is_open(),
            failing_since: outage.as_ref().map(|o| o.since),
            last_error: outage.as_ref().map(|o| o.last_error.clone()),
        }
    }

    /// True once no frame will come any more: a file source ended, the
    /// config proved unusable, or the capture was stopped.
    pub fn is_finished(&self) -> bool {
        self.shared.mailbox.is_closed()
    }

    /// Stops the capture thread and waits for it. The stats stay readable,
    /// and a frame left in the mailbox can still be taken.
    pub fn stop(&mut self) {
        self.shared.stop.set();
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                log::error!("capture: the capture thread panicked");
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How one open-and-read round of the capture thread ended.
enum Round {
    /// Asked to stop, or no frame will ever come: the thread ends.
    Over,
    /// The source failed or could not be opened: retry after a backoff.
    Failed { error: String, delivered: bool },
}

/// The capture thread: rounds of open-and-read until stopped or over.
fn run<F>(mut opener: F, mut backoff: Backoff, shared: &Shared)
where
    F: FnMut() -> Result<Box<dyn FrameSource>, CaptureError>,
{
    let mut after_failure = false;
    let mut last_warning: Option<Instant> = None;
    while !shared.stop.is_set() {
        // A source that panics (in a driver binding, say) is a failed source,
        // not the end of the service.
        let round = panic::catch_unwind(AssertUnwindSafe(|| {
            read_until_failure(&mut opener, shared, after_failure)
        }));
        shared.open.store(false, Ordering::Relaxed);
        let round = round.unwrap_or_else(|panic| Round::Failed {
            error: format!("the source panicked: {}", panic_message(&*panic)),
            delivered: false,
        });
        let Round::Failed { error, delivered } = round else {
            break;
        };
        after_failure = true;
        if delivered {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        let now = Instant::now();
        shared.alive_until(now + delay);
        let first = shared.record_failure(&error);
        if first || last_warning.is_none_or(|at| now - at >= OUTAGE_WARNING_INTERVAL) {
            log::warn!("capture: {error}; retrying in {delay:?}");
            last_warning = Some(now);
        } else {
            log::debug!("capture: {error}; retrying in {delay:?}");
        }
        if shared.stop.sleep(delay) {
            break;
        }
    }
    shared.mailbox.close();
}

/// Opens a source and feeds its frames to the mailbox until it fails.
fn read_until_failure<F>(opener: &mut F, shared: &Shared, after_failure: bool) -> Round
where
    F: FnMut() -> Result<Box<dyn FrameSource>, CaptureError>,
{
    shared.alive_until(Instant::now());
    let mut source = match opener() {
        Ok(source) => source,
        Err(error) => return end_of_round(error, "the source", false),
    };
    shared.open.store(true, Ordering::Relaxed);
    *shared.outage.lock().unwrap_or_else(PoisonError::into_inner) = None;
    let stream_format = source.stream_format();
    let format_note = stream_format.map_or(String::new(), |f| format!(": {f}"));
    if after_failure {
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        log::info!("capture: reconnected to {}{format_note}", source.describe());
    } else {
        log::info!("capture: reading {}{format_note}", source.describe());
    }
    *shared
        .stream_format
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = stream_format;
    let mut delivered = false;
    while !shared.stop.is_set() {
        if let Some(due) = source.next_due() {
            shared.alive_until(due);
            if shared
                .stop
                .sleep(due.saturating_duration_since(Instant::now()))
            {
                break;
            }
        }
        let next = source.next_frame();
        shared.alive_until(Instant::now());
        match next {
            Ok(frame) => {
                delivered = true;
                shared.mailbox.put(frame);
            }
            Err(CaptureError::Corrupt(reason)) => {
                let count = shared.corrupt.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged at 1, 2, 4, 8... so a camera gone bad cannot flood the log.
                if count.is_power_of_two() {
                    log::warn!("capture: skipped corrupt frame ({count} so far): {reason}");
                }
            }
            Err(error) => return end_of_round(error, &source.describe(), delivered),
        }
    }
    Round::Over
}

/// What an error from `what` means for the capture thread.
fn end_of_round(error: CaptureError, what: &str, delivered: bool) -> Round {
    match error {
        CaptureError::EndOfStream => {
            log::info!("capture: {what} ended");
            Round::Over
        }
        CaptureError::Config(_) => {
            log::error!("capture: {error}; capture stopped");
            Round::Over
        }
        CaptureError::Unavailable(_) | CaptureError::Corrupt(_) => Round::Failed {
            error: error.to_string(),
            delivered,
        },
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// A stop flag that sleeps can wait on.
#[derive(Default)]
struct StopSignal {
    stopped: Mutex<bool>,
    changed: Condvar,
}

impl StopSignal {
    fn set(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.changed.notify_all();
    }

    fn is_set(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps for `duration` or until stopped; true if stopped.
    fn sleep(&self, duration: Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        let (stopped, _) = self
            .changed
            .wait_timeout_while(stopped, duration, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        *stopped
    }
}
