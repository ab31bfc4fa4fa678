//! Selective-scan throughput of every kernel this CPU can run, in state
//! updates (B*KD*N*L) per second, at the model's two real shapes: each kernel
//! on one thread, then the best kernel on two. Few samples of long runs, so
//! the whole bench takes well under two minutes on two cores.
//!
//! `cargo bench --bench scan`

use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use fer_edge::scan::kernel::{available, best, selective_scan, ScanDims, ScanKernel};
use tract_linalg::multithread::{multithread_tract_scope, Executor};

#[path = "../tests/common/scan_problem.rs"]
#[allow(dead_code)] // the bench needs only the typical ranges
mod scan_problem;
use scan_problem::{Problem, TYPICAL};

/// The scans of one frame: (name, dims).
const SHAPES: [(&str, ScanDims); 2] = [
    (
        "KD2048xL1600",
        ScanDims {
            batch: 1,
            channels: 2048,
            groups: 8,
            state: 16,
            len: 1600,
        },
    ),
    (
        "KD4096xL400",
        ScanDims {
            batch: 1,
            channels: 4096,
            groups: 8,
            state: 16,
            len: 400,
        },
    ),
];

fn bench_kernels(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("selective_scan");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let runs: Vec<(String, &dyn ScanKernel, Executor)> = available()
        .into_iter()
        .map(|kernel| (kernel.name().to_owned(), kernel, Executor::SingleThread))
        .chain([(
            format!("{} x2 threads", best().name()),
            best(),
            Executor::multithread(2),
        )])
        .collect();
    for (shape, dims) in &SHAPES {
        let problem = Problem::random(*dims, true, TYPICAL, 1);
        let inputs = problem.inputs();
        let mut y = vec![0.0; dims.batch * dims.channels * dims.len];
        let updates = dims.batch * dims.channels * dims.state * dims.len;
        group.throughput(Throughput::Elements(updates as u64));
        for (name, kernel, executor) in &runs {
            group.bench_function(BenchmarkId::new(name, shape), |bencher| {
                bencher.iter(|| {
                    multithread_tract_scope(executor.clone(), || {
                        selective_scan(*kernel, dims, &inputs, &mut y).expect("valid shapes")
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_kernels);
criterion_main!(benches);
