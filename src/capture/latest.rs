//! The single-slot "latest frame" mailbox between the capture thread and the
//! consumer: a new frame replaces one not yet taken, which is counted as
//! dropped, so the consumer always gets the newest frame.

use super::CapturedFrame;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// One frame slot, with counts of what went through it.
#[derive(Default)]
pub(crate) struct LatestFrame {
    slot: Mutex<Slot>,
    filled: Condvar,
}

#[derive(Default)]
struct Slot {
    frame: Option<CapturedFrame>,
    /// No frame will come any more.
    closed: bool,
    put: u64,
    dropped: u64,
}

impl LatestFrame {
    /// Puts the newest frame in, replacing (and counting as dropped) a frame
    /// the consumer has not taken.
    pub(crate) fn put(&self, frame: CapturedFrame) {
        let mut slot = self.lock();
        slot.put += 1;
        if slot.frame.replace(frame).is_some() {
            slot.dropped += 1;
        }
        drop(slot);
        self.filled.notify_one();
    }

    /// Takes the newest frame, waiting up to `timeout` for one; `None` on
    /// timeout, or at once when the mailbox is closed and empty.
    pub(crate) fn take(&self, timeout: Duration) -> Option<CapturedFrame> {
        let deadline = Instant::now() + timeout;
        let mut slot = self.lock();
        loop {
            if let Some(frame) = slot.frame.take() {
                return Some(frame);
            }
            let now = Instant::now();
            if slot.closed || now >= deadline {
                return None;
            }
            slot = self
                .filled
                .wait_timeout(slot, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Says no frame will come any more; wakes a waiting consumer.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.filled.notify_all();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Frames put in, and frames replaced before they were taken.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let slot = self.lock();
        (slot.put, slot.dropped)
    }

    /// The slot holds plain data, valid even if a holder panicked.
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::PixelFormat;

    fn frame(sequence: u64) -> CapturedFrame {
        CapturedFrame::raw(PixelFormat::Grey8, 1, 1, vec![0], sequence).unwrap()
    }

    #[test]
    fn newest_frame_wins_and_stale_ones_are_counted() {
        let mailbox = LatestFrame::default();
        for sequence in 0..5 {
            mailbox.put(frame(sequence));
        }
        assert_eq!(mailbox.take(Duration::ZERO).map(|f| f.sequence), Some(4));
        assert!(mailbox.take(Duration::from_millis(5)).is_none());
        assert_eq!(mailbox.counts(), (5, 4));
    }

    #[test]
    fn take_wakes_on_put_and_on_close() {
        let mailbox = std::sync::Arc::new(LatestFrame::default());
        let producer = {
            let mailbox = mailbox.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                mailbox.put(frame(9));
                std::thread::sleep(Duration::from_millis(20));
                mailbox.close();
            })
        };
        let got = mailbox.take(Duration::from_secs(10)).map(|f| f.sequence);
        assert_eq!(got, Some(9));
        let start = Instant::now();
        assert!(mailbox.take(Duration::from_secs(10)).is_none());
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "close did not wake the consumer"
        );
        producer.join().unwrap();
    }
}
