//! Depthwise 3x3 convolutions (one 3x3 filter per channel, stride 1, padded
//! by one) computed straight from the input.
//!
//! tract's own `DepthWiseConv` walks the output pixel by pixel through a
//! generic patch iterator: 1.7 G multiply-adds a second on the model's SS2D
//! layers, where the rest of the network runs at 40-50 (docs/performance.md).
//! [`DirectDepthwise3x3`] copies each channel into a zero-bordered plane
//! `width + 2` wide. In that plane the nine taps of every output pixel sit at
//! the same nine offsets, so one channel is one long loop over its pixels
//! (rows `width + 2` apart, two columns of each discarded) that the compiler
//! turns into vector code. On x86_64 it is built again with AVX2 and FMA, or
//! AVX-512F, and the best the CPU has is picked at run time; aarch64 always
//! has NEON and FMA.

use super::{eval_same_shape, Activation, Kernel, PaddedConv3x3};
use crate::infer::on_tract_threads;
use std::cell::RefCell;
use std::sync::Arc;
use tract_hir::internal::*;

/// A depthwise 3x3 convolution at stride 1, padded by one zero on every side,
/// with a bias, of an f32 `[1, C, H, W]` or `[C, H, W]` input: tract's `Conv`
/// with one group per channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectDepthwise3x3 {
    /// `[C, 9]`: each channel's taps, row by row.
    weights: Arc<Tensor>,
    /// One per channel.
    bias: Arc<Tensor>,
    channels: usize,
    /// Linear, or SiLU once [`super::use_direct_convolutions`] folds in the
    /// `Silu` after it (where the CPU has a [`Kernel`] to compute it).
    activation: Activation,
}

/// Output pixels a thread task computes at least (whole channels): fewer
/// and the task costs more to hand out than to run.
const MIN_TASK_PIXELS: usize = 2048;

impl DirectDepthwise3x3 {
    /// The depthwise convolution that computes `node` (a `Conv`), if it is a
    /// [`PaddedConv3x3`] at stride 1 with as many groups as channels in and
    /// out.
    pub(super) fn for_node(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Self>> {
        let Some(conv) = PaddedConv3x3::of(model, node)? else {
            return Ok(None);
        };
        let channels = conv.input.0;
        if conv.stride != 1 || conv.group != channels || conv.output_channels != channels {
            return Ok(None);
        }
        Ok(Some(DirectDepthwise3x3 {
            weights: conv.weights,
            bias: Arc::new(tensor1(&conv.bias)),
            channels,
            activation: Activation::Linear,
        }))
    }

    /// This op with the `Silu` after it folded in.
    pub(super) fn with_silu(&self) -> Self {
        DirectDepthwise3x3 {
            activation: Activation::Silu,
            ..self.clone()
        }
    }
}

impl Op for DirectDepthwise3x3 {
    fn name(&self) -> StaticName {
        "DirectDepthwise3x3".into()
    }

    op_as_typed_op!();
}

impl EvalOp for DirectDepthwise3x3 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let weights = self.weights.try_as_plain_ram()?;
        let bias = self.bias.try_as_plain_ram()?;
        let (weights, bias) = (weights.as_slice::<f32>()?, bias.as_slice::<f32>()?);
        let kernel = match self.activation {
            Activation::Linear => None,
            Activation::Silu => Some(
                Kernel::best().context("no kernel for DirectDepthwise3x3's SiLU on this CPU")?,
            ),
        };
        let activate = |output: &mut [f32]| {
            if let Some(kernel) = kernel {
                kernel.activate(self.activation, output);
            }
        };
        eval_same_shape(
            "DirectDepthwise3x3",
            inputs,
            |input, (channels, h, w), output| {
                ensure!(
                    channels == self.channels,
                    "DirectDepthwise3x3: {channels} channels, expected {}",
                    self.channels
                );
                depthwise(input, (h, w), weights, bias, output, activate);
                Ok(())
            },
        )
    }
}

impl TypedOp for DirectDepthwise3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// `output [C, H, W]` = the depthwise 3x3 convolution of `input [C, H, W]`
/// padded by one, with `weights [C, 9]` and `bias [C]`, over tract's threads
/// in blocks of whole channels, each finished block then passed to
/// `activate` (while it is in cache).
fn depthwise(
    input: &[f32],
    (height, width): (usize, usize),
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
    activate: impl Fn(&mut [f32]) + Sync,
) {
    let plane = height * width;
    assert_eq!(input.len(), bias.len() * plane, "input is not [C, H, W]");
    assert_eq!(output.len(), input.len(), "output is not [C, H, W]");
    assert_eq!(weights.len(), bias.len() * 9, "weights are not [C, 9]");
    if plane == 0 {
        return;
    }
    let block = MIN_TASK_PIXELS.div_ceil(plane);
    let tasks: Vec<_> = input
        .chunks(block * plane)
        .zip(output.chunks_mut(block * plane))
        .zip(weights.chunks(block * 9).zip(bias.chunks(block)))
        .collect();
    let filter = best_filter();
    on_tract_threads(tasks, |((input, output), (weights, bias))| {
        with_planes(|planes| {
            planes.resize((height, width));
            for (((input, output), taps), &bias) in input
                .chunks(plane)
                .zip(output.chunks_mut(plane))
                .zip(weights.chunks(9))
                .zip(bias)
            {
                let taps: &[f32; 9] = taps.try_into().expect("chunks of 9");
                planes.fill(input);
                filter(&planes.bordered, width + 2, taps, bias, &mut planes.wide);
                planes.narrow_into(output);
            }
        });
        activate(output);
    });
}

/// One channel's working planes, kept per thread.
#[derive(Default)]
struct Planes {
    /// The channel with a border of zeros: `[H + 2, W + 2]`.
    bordered: Vec<f32>,
    /// The output with two extra columns a row: `[H, W + 2]` but for the
    /// last row's extras.
    wide: Vec<f32>,
    height: usize,
    width: usize,
}

impl Planes {
    /// Sizes the planes for `height` x `width` channels, with a zero border.
    fn resize(&mut self, (height, width): (usize, usize)) {
        self.bordered.clear();
        self.bordered.resize((height + 2) * (width + 2), 0.0);
        self.wide.resize(height * (width + 2) - 2, 0.0);
        (self.height, self.width) = (height, width);
    }

    /// Copies `channel [H, W]` inside the border.
    fn fill(&mut self, channel: &[f32]) {
        let stride = self.width + 2;
        for (row, values) in channel.chunks(self.width).enumerate() {
            let start = (row + 1) * stride + 1;
            self.bordered[start..start + self.width].copy_from_slice(values);
        }
    }

    /// Copies the wide output's rows, less their extra columns, to `output`.
    fn narrow_into(&self, output: &mut [f32]) {
        let stride = self.width + 2;
        for (row, values) in output.chunks_mut(self.width).enumerate() {
            values.copy_from_slice(&self.wide[row * stride..row * stride + self.width]);
        }
    }
}

thread_local! {
    static PLANES: RefCell<Planes> = RefCell::new(Planes::default());
}

/// Calls `f` with this thread's [`Planes`] (a task borrows them only while
/// it runs, and runs no other task meanwhile).
fn with_planes<R>(f: impl FnOnce(&mut Planes) -> R) -> R {
    PLANES.with(|planes| f(&mut planes.borrow_mut()))
}

/// Computes `wide[q] = bias + sum over the taps (dy, dx) of
/// taps[3 dy + dx] * bordered[q + dy stride + dx]`: one channel, every
/// output pixel at `q = row * stride + column`.
type Filter = fn(bordered: &[f32], stride: usize, taps: &[f32; 9], bias: f32, wide: &mut [f32]);

/// The filter built for the best instruction set this CPU has.
fn best_filter() -> Filter {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return x86_64::filter_avx512f;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return x86_64::filter_avx2_fma;
        }
    }
    filter_portable
}

/// [`Filter`] for any CPU (fused multiply-adds only where every CPU of the
/// architecture has them; elsewhere a fused one would be a library call).
fn filter_portable(bordered: &[f32], stride: usize, taps: &[f32; 9], bias: f32, wide: &mut [f32]) {
    filter::<{ cfg!(target_arch = "aarch64") }>(bordered, stride, taps, bias, wide);
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    //! [`super::filter`] compiled for x86_64's vector extensions.

    pub fn filter_avx512f(b: &[f32], stride: usize, taps: &[f32; 9], bias: f32, wide: &mut [f32]) {
        // SAFETY: `best_filter` picks this only on CPUs with AVX-512F.
        unsafe { avx512f(b, stride, taps, bias, wide) }
    }

    pub fn filter_avx2_fma(b: &[f32], stride: usize, taps: &[f32; 9], bias: f32, wide: &mut [f32]) {
        // SAFETY: `best_filter` picks this only on CPUs with AVX2 and FMA.
        unsafe { avx2_fma(b, stride, taps, bias, wide) }
    }

    #[target_feature(enable = "avx512f,fma")]
    unsafe fn avx512f(b: &[f32], stride: usize, taps: &[f32; 9], bias: f32, wide: &mut [f32]) {
        super::filter::<true>(b, stride, taps, bias, wide);
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_fma(b: &[f32], stride: usize, taps: &[f32; 9], bias: f32, wide: &mut [f32]) {
        super::filter::<true>(b, stride, taps, bias, wide);
    }
}

/// The [`Filter`], with fused multiply-adds when `FUSED`; inlined into each
/// instruction set's build.
#[inline(always)]
fn filter<const FUSED: bool>(
    bordered: &[f32],
    stride: usize,
    taps: &[f32; 9],
    bias: f32,
    wide: &mut [f32],
) {
    let n = wide.len();
    let tap = |dy: usize, dx: usize| &bordered[dy * stride + dx..dy * stride + dx + n];
    let rows = [
        [tap(0, 0), tap(0, 1), tap(0, 2)],
        [tap(1, 0), tap(1, 1), tap(1, 2)],
        [tap(2, 0), tap(2, 1), tap(2, 2)],
    ];
    let multiply_add = |a: f32, b: f32, c: f32| if FUSED { a.mul_add(b, c) } else { a * b + c };
    for (q, out) in wide.iter_mut().enumerate() {
        let mut sum = bias;
        for (dy, row) in rows.iter().enumerate() {
            for (dx, values) in row.iter().enumerate() {
                sum = multiply_add(taps[dy * 3 + dx], values[q], sum);
            }
        }
        *out = sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::test_support::{assert_close, run_optimised, values};

    /// `x` shaped `input` -> a depthwise 3x3 `Conv` (padded by one, at
    /// `stride`, random weights and bias).
    fn depthwise_model(input: &[usize], stride: usize) -> TypedModel {
        use tract_core::ops::cnn::conv::{Conv, KernelFormat};
        use tract_core::ops::cnn::{PaddingSpec, PoolSpec};
        use tract_core::ops::nn::DataFormat;
        let channels = input[input.len() - 3];
        let data_format = if input.len() == 4 {
            DataFormat::NCHW
        } else {
            DataFormat::CHW
        };
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(input)).unwrap();
        let weights = Tensor::from_shape(&[channels, 1, 3, 3], &values(channels * 9, 5)).unwrap();
        let w = model.add_const("w", weights).unwrap();
        let b = model
            .add_const("b", tensor1(&values(channels, 11)))
            .unwrap();
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format,
                kernel_shape: tvec!(3, 3),
                padding: PaddingSpec::Explicit(tvec!(1, 1), tvec!(1, 1)),
                dilations: None,
                strides: Some(tvec!(stride, stride)),
                input_channels: channels,
                output_channels: channels,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: channels,
            q_params: None,
        };
        let y = model.wire_node("conv", conv, &[x, w, b]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    /// What [`DirectDepthwise3x3::for_node`] makes of `model`'s last node.
    fn direct_for_last(model: &TypedModel) -> Option<DirectDepthwise3x3> {
        let order = model.eval_order().unwrap();
        let node = model.node(order[order.len() - 1]);
        DirectDepthwise3x3::for_node(model, node).unwrap()
    }

    #[test]
    fn matches_tracts_depthwise_convolution() {
        for input in [
            &[1, 256, 7, 7][..],
            &[1, 128, 28, 28],
            &[40, 14, 14],
            &[3, 1, 1],
            &[5, 2, 33],
        ] {
            let model = depthwise_model(input, 1);
            let mut direct = model.clone();
            let op = direct_for_last(&direct).unwrap_or_else(|| panic!("{input:?}: not taken"));
            let node = direct.node(direct.eval_order().unwrap().pop().unwrap());
            let patch =
                TypedModelPatch::replace_single_op(&direct, node, &node.inputs[..1], op).unwrap();
            patch.apply(&mut direct).unwrap();
            let count: usize = input.iter().product();
            let x = Tensor::from_shape(input, &values(count, 3)).unwrap();
            let (got, want) = (run_optimised(direct, &x), run_optimised(model, &x));
            assert_close(&got[0], &want[0], &format!("{input:?}"));
        }
    }

    #[test]
    fn a_silu_after_it_is_folded_in_where_a_kernel_computes_it() {
        let input = [1, 64, 14, 14];
        let mut model = depthwise_model(&input, 1);
        let conv = model.output_outlets().unwrap()[0];
        let silu = tract_core::ops::nn::silu::silu();
        let y = model.wire_node("silu", silu, &[conv]).unwrap();
        model.select_output_outlets(&y).unwrap();
        let mut direct = model.clone();
        let replaced = super::super::use_direct_convolutions(&mut direct).unwrap();
        let kernel = Kernel::best().is_some();
        assert_eq!(
            (replaced.depthwise, replaced.silu),
            (1, usize::from(kernel))
        );
        let count: usize = input.iter().product();
        let x = Tensor::from_shape(&input, &values(count, 3)).unwrap();
        let (got, want) = (run_optimised(direct, &x), run_optimised(model, &x));
        assert_close(&got[0], &want[0], "depthwise then SiLU");
    }

    #[test]
    fn every_filter_build_gives_the_same_channel() {
        let (height, width) = (6, 9);
        let mut planes = Planes::default();
        planes.resize((height, width));
        planes.fill(&values(height * width, 2));
        let taps: [f32; 9] = values(9, 4).try_into().unwrap();
        let run = |filter: Filter| {
            let mut wide = vec![f32::NAN; planes.wide.len()];
            filter(&planes.bordered, width + 2, &taps, 0.25, &mut wide);
            wide
        };
        let want = run(filter_portable);
        assert_close(&run(best_filter()), &want, "best against portable");
        // The pixel at row 2, column 0 by hand: its left column is border.
        let q = 2 * (width + 2);
        let at = |row: usize, column: usize| planes.bordered[row * (width + 2) + column];
        let mut sum = 0.25;
        for dy in 0..3 {
            for dx in 1..3 {
                sum += taps[dy * 3 + dx] * at(2 + dy, dx);
            }
        }
        assert_close(&want[q..q + 1], &[sum], "row 2, column 0");
    }

    #[test]
    fn strided_depthwise_convolutions_are_left_to_tract() {
        assert!(direct_for_last(&depthwise_model(&[1, 4, 8, 8], 2)).is_none());
    }
}
