//! The frame loop's heap: after warm-up, detecting one more frame (MJPEG
//! decode, preprocess, the network, decode) leaves the live heap as it found
//! it, on one thread and on two. Measured with a counting global allocator,
//! so every allocation of the process (tract's worker threads too) is seen.
//! Also prints allocations and bytes per frame, the figures
//! docs/performance.md quotes.
//!
//! One exception, at two threads: tract's workers keep thread-local scratch
//! (tract-linalg's matrix-product and element-wise buffers, tract-core's
//! per-session matrix-product scratch) that grows to the largest op the
//! thread has run, and which thread runs which part of an op depends on
//! timing, so one may meet a larger part for the first time after warm-up.
//! Seen on a 2-core Intel Xeon VM: 87,316 bytes in one frame, then 64 in the
//! next, in about half of the 30-frame runs. That growth is bounded and
//! stops; a leak grows with the frames. So at two threads at most
//! [`SCRATCH_GROWTH_FRAMES`] frames may grow, by at most
//! [`SCRATCH_GROWTH_BYTES`] in all; at one thread none may.

mod common;

use common::{emulated, repo};
use fer_edge::decode::DecodeOptions;
use fer_edge::detector::Detector;
use fer_edge::infer::{set_threads, Model};
use fer_edge::preprocess::{Frame, PixelFormat};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting live bytes, allocations and bytes asked.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED_BYTES: AtomicUsize = AtomicUsize::new(0);

fn counted(size: usize) {
    LIVE_BYTES.fetch_add(size as isize, Relaxed);
    ALLOCATIONS.fetch_add(1, Relaxed);
    ALLOCATED_BYTES.fetch_add(size, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters change.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(new_size);
        LIVE_BYTES.fetch_sub(layout.size() as isize, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// At two threads: the most frames after warm-up in which tract's thread-local
/// scratch may still grow (seen: 2), and the most it may grow in all (seen:
/// 87,380 bytes).
const SCRATCH_GROWTH_FRAMES: usize = 3;
const SCRATCH_GROWTH_BYTES: isize = 256 * 1024;

#[test]
fn a_frame_after_warm_up_leaves_the_heap_as_it_found_it() {
    // Under qemu a frame takes seconds: fewer frames, same check.
    let (warmup, frames) = if emulated() { (3, 4) } else { (5, 30) };
    let jpeg = std::fs::read(repo("samples/obama.jpg")).unwrap();
    let frame = Frame {
        format: PixelFormat::Mjpeg,
        width: 0,
        height: 0,
        data: &jpeg,
    };
    for threads in [1, 2] {
        set_threads(threads);
        let model = Model::load(&repo("models/fer-yolo-mamba-nano.onnx")).unwrap();
        let mut detector = Detector::new(model, DecodeOptions::default());
        for _ in 0..warmup {
            detector.detect(&frame).unwrap();
        }
        let mut live_before = LIVE_BYTES.load(Relaxed);
        let (calls, bytes) = (ALLOCATIONS.load(Relaxed), ALLOCATED_BYTES.load(Relaxed));
        let mut growing_frames = Vec::new();
        for n in 0..frames {
            let faces = detector.detect(&frame).unwrap();
            assert_eq!(faces.len(), 1);
            drop(faces);
            let live = LIVE_BYTES.load(Relaxed);
            if live != live_before {
                growing_frames.push((n, live - live_before));
            }
            live_before = live;
        }
        let growth: isize = growing_frames.iter().map(|&(_, bytes)| bytes).sum();
        let allowed = match threads {
            1 => growing_frames.is_empty(),
            _ => {
                growing_frames.len() <= SCRATCH_GROWTH_FRAMES
                    && growing_frames.iter().all(|&(_, bytes)| bytes > 0)
                    && growth <= SCRATCH_GROWTH_BYTES
            }
        };
        assert!(
            allowed,
            "{threads} threads: the live heap changed after warm-up \
             (frame, bytes): {growing_frames:?}"
        );
        println!(
            "{threads} threads: per frame {} allocations, {:.1} MB asked, \
             live heap changed in {:?} (frame, bytes)",
            (ALLOCATIONS.load(Relaxed) - calls) / frames,
            (ALLOCATED_BYTES.load(Relaxed) - bytes) as f64 / frames as f64 / 1e6,
            growing_frames
        );
    }
}
