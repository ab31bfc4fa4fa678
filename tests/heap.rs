//! The frame loop's heap: after warm-up, detecting one more frame (MJPEG
//! decode, preprocess, the network, decode) leaves the live heap exactly as
//! it found it, on one thread and on two. Measured with a counting global
//! allocator, so every allocation of the process (tract's worker threads
//! too) is seen. Also prints allocations and bytes per frame, the figures
//! docs/performance.md quotes.

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
        let live_before = LIVE_BYTES.load(Relaxed);
        let (calls, bytes) = (ALLOCATIONS.load(Relaxed), ALLOCATED_BYTES.load(Relaxed));
        for n in 0..frames {
            let faces = detector.detect(&frame).unwrap();
            assert_eq!(faces.len(), 1);
            drop(faces);
            let growth = LIVE_BYTES.load(Relaxed) - live_before;
            assert_eq!(
                growth, 0,
                "{threads} threads: frame {n} left {growth} bytes"
            );
        }
        println!(
            "{threads} threads: per frame {} allocations, {:.1} MB asked, live heap unchanged",
            (ALLOCATIONS.load(Relaxed) - calls) / frames,
            (ALLOCATED_BYTES.load(Relaxed) - bytes) as f64 / frames as f64 / 1e6
        );
    }
}
