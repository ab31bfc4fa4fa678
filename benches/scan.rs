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
use fer_edge::scan::kernel::{available, best, selective_scan, ScanDims, ScanInputs, ScanKernel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tract_linalg::multithread::{multithread_tract_scope, Executor};

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

/// Owned inputs for one shape.
struct Tensors {
    u: Vec<f32>,
    delta: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
    delta_bias: Vec<f32>,
}

impl Tensors {
    /// Random values in the ranges of a trained model: A in [-16, -1],
    /// dt = softplus(delta + delta_bias) mostly between 0.01 and 1.
    fn random(dims: &ScanDims) -> Tensors {
        let mut rng = StdRng::seed_from_u64(1);
        let mut draw = |count: usize, low: f32, high: f32| -> Vec<f32> {
            (0..count).map(|_| rng.gen_range(low..=high)).collect()
        };
        let ScanDims {
            batch,
            channels,
            groups,
            state,
            len,
        } = *dims;
        Tensors {
            u: draw(batch * channels * len, -2.0, 2.0),
            delta: draw(batch * channels * len, -3.0, 1.0),
            a: draw(channels * state, -16.0, -1.0),
            b: draw(batch * groups * state * len, -1.0, 1.0),
            c: draw(batch * groups * state * len, -1.0, 1.0),
            d: draw(channels, -1.0, 1.0),
            delta_bias: draw(channels, -1.0, 0.0),
        }
    }

    fn inputs(&self) -> ScanInputs<'_> {
        ScanInputs {
            u: &self.u,
            delta: &self.delta,
            a: &self.a,
            b: &self.b,
            c: &self.c,
            d: &self.d,
            delta_bias: &self.delta_bias,
            delta_softplus: true,
        }
    }
}

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
        let tensors = Tensors::random(dims);
        let inputs = tensors.inputs();
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
