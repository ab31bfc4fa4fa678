//! The frame loop's heap: after warm-up, detecting one more frame (MJPEG
//! decode, preprocess, the network, decode) leaves the live heap as it found
//! it, on one thread and on two. Measured with a counting global allocator,
//! so every allocation of the process (tract's worker threads too) is seen.
//! Also prints allocations and bytes per frame, the figures
//! docs/performance.md quotes. And the selective scan, fer-edge's own op,
//! allocates nothing once warm but its list of tasks: the rest of a frame's
//! allocations are the tensors tract's ops return.
//!
//! One exception, at two threads: tract's workers keep thread-local scratch
//! (tract-linalg's matrix-product and element-wise buffers, tract-core's
//! per-session matrix-product scratch) that grows to the largest op the
//! thread has run, and which thread runs which part of an op depends on
//! timing, so one may meet a larger part for the first time after warm-up.
//! Seen on a 2-core Intel Xeon VM, in about half of the 30-frame runs:
//! 87,316 bytes in one frame, then 64 in the next; sometimes also 27,648
//! (and 32) in other frames. fer-edge's direct 3x3 convolutions keep such a
//! buffer too, on the thread that runs the plan (which of the two workers
//! that is changes from frame to frame): the zero-padded input copy of the
//! largest output-channel layer, the stem's 16 x 112 x 112 map, 831,744
//! bytes. Seen on a 2-core AMD EPYC VM with a training job on both cores:
//! 852,264 bytes in the third frame, then 64. That growth is bounded and
//! stops; a leak grows with the frames. So at two threads at most
//! [`SCRATCH_GROWTH_FRAMES`] frames may grow, by at most
//! [`SCRATCH_GROWTH_BYTES`] in all; at one thread none may.

mod common;

use common::{emulated, repo};
use fer_edge::decode::DecodeOptions;
use fer_edge::detector::Detector;
use fer_edge::infer::{set_threads, Model};
use fer_edge::preprocess::{Frame, PixelFormat};
use fer_edge::scan::kernel::cross_scan::{selective_scan_2d, GridDims, GridInputs};
use fer_edge::scan::kernel::{available, selective_scan, Delta, ScanDims, ScanInputs};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;
use tract_linalg::multithread::{multithread_tract_scope, Executor};

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

/// At two threads: the most frames after warm-up in which the thread-local
/// scratch may still grow (seen: 3), and the most it may grow in all (seen:
/// 852,328 bytes, the second thread's padded input copy and a little).
const SCRATCH_GROWTH_FRAMES: usize = 4;
const SCRATCH_GROWTH_BYTES: isize = 1280 * 1024;

/// The counters are the whole process's: the tests take turns.
static ONE_TEST_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn a_frame_after_warm_up_leaves_the_heap_as_it_found_it() {
    let _turn = ONE_TEST_AT_A_TIME.lock().unwrap();
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

#[test]
fn a_warm_selective_scan_allocates_only_its_task_list() {
    let _turn = ONE_TEST_AT_A_TIME.lock().unwrap();
    // An SS2D block's size: Di 64 channels, K = 4 directions, N = 16 states
    // (the contract's), a 28 x 28 grid.
    let (channels, directions, state, height, width) = (64, 4, 16, 28, 28);
    let len = height * width;
    let filled = |n: usize, value: f32| vec![value; n];
    let (u, delta) = (
        filled(channels * len, 0.5),
        filled(directions * channels * len, -1.0),
    );
    let (a, bc) = (
        filled(directions * channels * state, -1.0),
        filled(directions * state * len, 0.25),
    );
    let (d, delta_bias) = (
        filled(directions * channels, 1.0),
        filled(directions * channels, -2.0),
    );
    let mut y = filled(channels * len, 0.0);
    let grid = GridDims {
        batch: 1,
        channels,
        directions,
        state,
        height,
        width,
    };
    let grid_inputs = GridInputs {
        u: &u,
        delta: Delta::Rows(&delta),
        a: &a,
        b: &bc,
        c: &bc,
        d: &d,
        delta_bias: &delta_bias,
        delta_softplus: true,
    };
    // Version 1 on the same data: every direction one group of Di channels.
    let sequences = ScanDims {
        batch: 1,
        channels: directions * channels,
        groups: directions,
        state,
        len,
    };
    let GridInputs { a, b, c, d, .. } = grid_inputs;
    let sequence_inputs = ScanInputs {
        u: &delta,
        delta: &delta,
        delta_bias: grid_inputs.delta_bias,
        delta_softplus: true,
        a,
        b,
        c,
        d,
    };
    let mut sequence_y = filled(directions * channels * len, 0.0);
    // Version 3's form: the dt projection (rank 4) inside the scan.
    let rank = 4;
    let (dt_low, dt_weight) = (
        filled(directions * rank * len, -0.5),
        filled(directions * channels * rank, 0.5),
    );
    let low_rank_inputs = GridInputs {
        delta: Delta::LowRank {
            weight: &dt_weight,
            low: &dt_low,
            rank,
        },
        ..grid_inputs
    };
    for kernel in available() {
        let allocations = |scan: &mut dyn FnMut()| {
            multithread_tract_scope(Executor::SingleThread, || {
                scan(); // warm-up
                let before = ALLOCATIONS.load(Relaxed);
                scan();
                ALLOCATIONS.load(Relaxed) - before
            })
        };
        let two_d =
            allocations(&mut || selective_scan_2d(kernel, &grid, &grid_inputs, &mut y).unwrap());
        let low_rank = allocations(&mut || {
            selective_scan_2d(kernel, &grid, &low_rank_inputs, &mut y).unwrap()
        });
        let one_d = allocations(&mut || {
            selective_scan(kernel, &sequences, &sequence_inputs, &mut sequence_y).unwrap()
        });
        assert_eq!(
            (two_d, low_rank, one_d),
            (1, 1, 1),
            "{}: allocations of a warm 2-D scan, low-rank 2-D scan and 1-D scan",
            kernel.name()
        );
    }
}
