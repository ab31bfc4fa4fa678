//! 3x3 and channel-first pointwise convolutions at the shapes of the
//! built-in model's layers, in multiply-adds a second: each of fer-edge's
//! direct kernels this CPU runs (in the tiling it picks) against tract's own
//! convolution (padding, im2col, matrix product) in the same run, one
//! thread. Skipped, saying so, on CPUs without a direct kernel.
//!
//! `cargo bench --bench conv`

use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode,
    Throughput,
};
use fer_edge::conv::{
    pack_weights, pack_weights_1x1, Activation, Channels, Kernel, Layer, PointwiseLayer,
};
use tract_core::ops::cnn::conv::{Conv, KernelFormat};
use tract_core::ops::cnn::{PaddingSpec, PoolSpec};
use tract_core::ops::nn::DataFormat;
use tract_hir::internal::*;

/// (input channels, output channels, height, width, stride): the stem's
/// two layers, the first stride-2 layers of the next stages, a 28x28 layer
/// of the neck and the 14x14 and 7x7 layers of the head.
const LAYERS: [(usize, usize, usize, usize, usize); 7] = [
    (12, 16, 112, 112, 1),
    (16, 32, 112, 112, 2),
    (32, 64, 56, 56, 2),
    (64, 64, 28, 28, 1),
    (128, 64, 28, 28, 2),
    (64, 64, 14, 14, 1),
    (64, 64, 7, 7, 1),
];

/// (input channels, output channels, height, width) of pointwise layers:
/// an SS2D block's input projection at 28x28 (a matrix product over the
/// map), the neck's 1x1 convolutions at 28x28 and 14x14, the head's at 7x7.
const POINTWISE_LAYERS: [(usize, usize, usize, usize); 4] = [
    (128, 288, 28, 28),
    (64, 32, 28, 28),
    (128, 64, 14, 14),
    (256, 128, 7, 7),
];

/// Values in [-1, 1) from a fixed sequence.
fn values(count: usize, seed: u32) -> Vec<f32> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1 << 23) as f32 - 1.0
        })
        .collect()
}

/// tract's plan for the layer: `x [C, H, W]` -> a `size` x `size` `Conv`
/// padded by `size / 2`.
fn tract_plan(
    size: usize,
    (channels, outputs, height, width, stride): (usize, usize, usize, usize, usize),
    weights: &[f32],
    bias: &[f32],
) -> std::sync::Arc<TypedSimplePlan> {
    let mut model = TypedModel::default();
    let x = model
        .add_source("x", f32::fact([channels, height, width]))
        .unwrap();
    let w = Tensor::from_shape(&[outputs, channels, size, size], weights).unwrap();
    let w = model.add_const("w", w).unwrap();
    let b = model.add_const("b", tensor1(bias)).unwrap();
    let conv = Conv {
        pool_spec: PoolSpec {
            data_format: DataFormat::CHW,
            kernel_shape: tvec!(size, size),
            padding: PaddingSpec::Explicit(tvec!(size / 2, size / 2), tvec!(size / 2, size / 2)),
            dilations: None,
            strides: Some(tvec!(stride, stride)),
            input_channels: channels,
            output_channels: outputs,
        },
        kernel_fmt: KernelFormat::OIHW,
        group: 1,
        q_params: None,
    };
    let y = model.wire_node("conv", conv, &[x, w, b]).unwrap();
    model.select_output_outlets(&y).unwrap();
    model.into_optimized().unwrap().into_runnable().unwrap()
}

/// Every direct kernel this CPU runs (an AVX-512 CPU runs the AVX2 ones
/// too) and the benchmark group `name` for them, or None (said loudly) on a
/// CPU without one.
fn kernels_and_group<'a>(
    criterion: &'a mut Criterion,
    name: &str,
) -> Option<(Vec<Kernel>, BenchmarkGroup<'a, WallTime>)> {
    let kernels: Vec<Kernel> = Kernel::available().collect();
    if kernels.is_empty() {
        eprintln!(
            "\n**** SKIPPED the {name} bench: no direct convolution kernel for this CPU ****\n"
        );
        return None;
    }
    fer_edge::device::avoid_faulty_cpu_kernels();
    let mut group = criterion.benchmark_group(name);
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    Some((kernels, group))
}

/// Times tract's plan for `layer` (a `size` x `size` convolution) on
/// `input`, beside the direct kernel's entry for `shape`.
fn bench_tract(
    group: &mut BenchmarkGroup<WallTime>,
    shape: &str,
    (size, layer): (usize, (usize, usize, usize, usize, usize)),
    (weights, bias, input): (&[f32], &[f32], &[f32]),
) {
    let (channels, _, height, width, _) = layer;
    let plan = tract_plan(size, layer, weights, bias);
    let x = Tensor::from_shape(&[channels, height, width], input).unwrap();
    group.bench_function(BenchmarkId::new("tract", shape), |bencher| {
        bencher.iter(|| plan.run(tvec!(x.clone().into_tvalue())).unwrap())
    });
}

fn bench_layers(criterion: &mut Criterion) {
    let Some((kernels, mut group)) = kernels_and_group(criterion, "conv3x3") else {
        return;
    };
    for layer in LAYERS {
        let (channels, outputs, height, width, stride) = layer;
        let out = ((height - 1) / stride + 1, (width - 1) / stride + 1);
        let shape = format!("{channels}x{height}x{width}->{outputs}/s{stride}");
        let input = values(channels * height * width, 1);
        let weights = values(outputs * channels * 9, 2);
        let bias = values(outputs, 3);
        group.throughput(Throughput::Elements(
            (outputs * out.0 * out.1 * channels * 9) as u64,
        ));
        for kernel in &kernels {
            let tiling = kernel
                .tiling(stride, out)
                .expect("a tiling for every layer");
            let packed = pack_weights(&weights, channels, tiling);
            let direct = Layer {
                tiling,
                stride,
                weights: &packed,
                bias: &bias,
                activation: Activation::Linear,
            };
            let mut output = vec![0.0; outputs * out.0 * out.1];
            let name = format!("fer-edge {} {tiling:?}", kernel.name());
            group.bench_function(BenchmarkId::new(name, &shape), |bencher| {
                bencher.iter(|| kernel.run(&direct, &input, (channels, height, width), &mut output))
            });
        }
        bench_tract(&mut group, &shape, (3, layer), (&weights, &bias, &input));
    }
    group.finish();
}

fn bench_pointwise(criterion: &mut Criterion) {
    let Some((kernels, mut group)) = kernels_and_group(criterion, "pointwise") else {
        return;
    };
    for (channels, outputs, height, width) in POINTWISE_LAYERS {
        let pixels = height * width;
        let shape = format!("{channels}x{height}x{width}->{outputs}");
        let input = values(channels * pixels, 1);
        let weights = values(outputs * channels, 2);
        let bias = values(outputs, 3);
        group.throughput(Throughput::Elements((outputs * pixels * channels) as u64));
        let packed = pack_weights_1x1(&weights, channels, Channels::First);
        let direct = PointwiseLayer {
            channels: Channels::First,
            weights: &packed,
            bias: &bias,
            activation: Activation::Linear,
        };
        let mut output = vec![0.0; outputs * pixels];
        for kernel in &kernels {
            let name = format!("fer-edge {} First", kernel.name());
            group.bench_function(BenchmarkId::new(name, &shape), |bencher| {
                bencher.iter(|| {
                    kernel.run_pointwise(&direct, &[&input], (channels, pixels), &mut output)
                })
            });
        }
        let layer = (channels, outputs, height, width, 1);
        bench_tract(&mut group, &shape, (1, layer), (&weights, &bias, &input));
    }
    group.finish();
}

criterion_group!(benches, bench_layers, bench_pointwise);
criterion_main!(benches);
