//! Max pooling over an odd square window at stride 1, padded to keep the
//! size (the SPPF block's 5x5 pools), as two one-dimensional passes.
//!
//! tract's `OptMaxPool` visits every window of every pixel through its
//! generic patch iterator: 0.12 ms a frame for each of the model's 7x7 maps
//! of 128 channels, ten times onnxruntime's time (docs/performance.md).
//! [`DirectMaxPool`] takes the maximum down each column's window into a
//! scratch plane, then along each row's window: 2k comparisons a pixel in
//! place of k², each pass over whole planes.

use super::eval_same_shape;
use crate::infer::on_tract_threads;
use std::cell::RefCell;
use tract_core::ops::cnn::{MaxPool, PaddingSpec};
use tract_core::ops::nn::DataFormat;
use tract_hir::internal::*;

/// Max pooling of an f32 `[1, C, H, W]` or `[C, H, W]` input over a
/// `size` x `size` window (odd) at stride 1, padded by `size / 2` on every
/// side (padding never wins): tract's `MaxPool` in the shape SPPF uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectMaxPool {
    size: usize,
}

/// Output values a thread task computes at least (whole channels).
const MIN_TASK_VALUES: usize = 4096;

impl DirectMaxPool {
    /// The pooling that computes `node`, if it is a `MaxPool` of that shape
    /// with no index output.
    pub(super) fn for_node(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Self>> {
        let Some(pool) = node.op_as::<MaxPool>() else {
            return Ok(None);
        };
        let spec = &pool.pool_spec;
        let ones = |v: &Option<TVec<usize>>| v.as_ref().is_none_or(|v| v.iter().all(|&x| x == 1));
        let &[size, width] = &spec.kernel_shape[..] else {
            return Ok(None);
        };
        let half = size / 2;
        let padded_to_keep_size = match &spec.padding {
            PaddingSpec::Explicit(before, after)
            | PaddingSpec::ExplicitOnnxPool(before, after, _) => {
                before.iter().chain(after).all(|&p| p == half)
            }
            PaddingSpec::SameUpper | PaddingSpec::SameLower => true,
            PaddingSpec::Valid => false,
        };
        let input = model.outlet_fact(node.inputs[0])?;
        let batch_of_one = matches!(
            (spec.data_format, input.shape.as_concrete()),
            (DataFormat::NCHW, Some(&[1, _, _, _])) | (DataFormat::CHW, Some(&[_, _, _]))
        );
        let taken = size == width
            && size % 2 == 1
            && padded_to_keep_size
            && ones(&spec.strides)
            && ones(&spec.dilations)
            && pool.with_index_outputs.is_none()
            && input.datum_type == f32::datum_type()
            && batch_of_one;
        Ok(taken.then_some(DirectMaxPool { size }))
    }
}

impl Op for DirectMaxPool {
    fn name(&self) -> StaticName {
        "DirectMaxPool".into()
    }

    op_as_typed_op!();
}

impl EvalOp for DirectMaxPool {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        eval_same_shape("DirectMaxPool", inputs, |input, (_, h, w), output| {
            max_pool(input, (h, w), self.size / 2, output);
            Ok(())
        })
    }
}

impl TypedOp for DirectMaxPool {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// A thread's scratch planes for [`max_pool`], kept between frames.
#[derive(Default)]
struct Scratch {
    /// The column pass's output, `[H, W]`.
    columns: Vec<f32>,
    /// The same, each row between `half` cells of minus infinity on either
    /// side: `[H, W + 2 half]`, so that a row's windows are runs of the
    /// flat buffer.
    padded: Vec<f32>,
    /// The row pass's output over `padded`'s runs.
    rows: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

/// `maxima[i] = max(maxima[i], values[i])` (the two of equal length).
fn take_maxima(maxima: &mut [f32], values: &[f32]) {
    for (maximum, &value) in maxima.iter_mut().zip(values) {
        *maximum = maximum.max(value);
    }
}

/// `output [C, H, W]` = the maximum of each pixel's window of `input
/// [C, H, W]` reaching `half` pixels each way (clipped at the edges), over
/// tract's threads in blocks of whole channels. Each pass takes maxima
/// over whole planes shifted against each other (rows shift by whole rows,
/// columns within rows padded with minus infinity), long runs the compiler
/// vectorises: SPPF's planes are 7 pixels wide.
fn max_pool(input: &[f32], (height, width): (usize, usize), half: usize, output: &mut [f32]) {
    let plane = height * width;
    assert_eq!(output.len(), input.len(), "output is not the input's shape");
    if plane == 0 {
        return;
    }
    let block = MIN_TASK_VALUES.div_ceil(plane);
    let tasks: Vec<_> = input
        .chunks(block * plane)
        .zip(output.chunks_mut(block * plane))
        .collect();
    let padded_width = width + 2 * half;
    let padded_plane = height * padded_width;
    on_tract_threads(tasks, |(input, output)| {
        SCRATCH.with(|scratch| {
            let Scratch {
                columns,
                padded,
                rows,
            } = &mut *scratch.borrow_mut();
            columns.resize(plane, 0.0);
            padded.clear();
            padded.resize(padded_plane, f32::NEG_INFINITY);
            rows.resize(padded_plane - 2 * half, 0.0);
            for (input, output) in input.chunks(plane).zip(output.chunks_mut(plane)) {
                columns.copy_from_slice(input);
                for shift in (1..=half).map(|d| d * width).take_while(|&s| s < plane) {
                    take_maxima(&mut columns[..plane - shift], &input[shift..]);
                    take_maxima(&mut columns[shift..], &input[..plane - shift]);
                }
                for (padded, row) in padded
                    .chunks_exact_mut(padded_width)
                    .zip(columns.chunks_exact(width))
                {
                    padded[half..half + width].copy_from_slice(row);
                }
                // rows[j] = max(padded[j..=j + 2 half]): at j = r (W + 2
                // half) + x, pixel (r, x)'s window.
                rows.copy_from_slice(&padded[..padded_plane - 2 * half]);
                for shift in 1..=2 * half {
                    take_maxima(rows, &padded[shift..]);
                }
                for (output, row) in output
                    .chunks_exact_mut(width)
                    .zip(rows.chunks(padded_width))
                {
                    output.copy_from_slice(&row[..width]);
                }
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::test_support::{run_optimised, values};
    use tract_core::ops::cnn::PoolSpec;

    /// `x` shaped `input` -> `MaxPool` of a `size` window padded by `pad`
    /// at `stride`.
    fn max_pool_model(input: &[usize], size: usize, pad: usize, stride: usize) -> TypedModel {
        let channels = input[input.len() - 3];
        let data_format = if input.len() == 4 {
            DataFormat::NCHW
        } else {
            DataFormat::CHW
        };
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(input)).unwrap();
        let pool = MaxPool {
            pool_spec: PoolSpec {
                data_format,
                kernel_shape: tvec!(size, size),
                padding: PaddingSpec::Explicit(tvec!(pad, pad), tvec!(pad, pad)),
                dilations: None,
                strides: Some(tvec!(stride, stride)),
                input_channels: channels,
                output_channels: channels,
            },
            with_index_outputs: None,
        };
        let y = model.wire_node("pool", pool, &[x]).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    /// What [`DirectMaxPool::for_node`] makes of `model`'s last node.
    fn direct_for_last(model: &TypedModel) -> Option<DirectMaxPool> {
        let order = model.eval_order().unwrap();
        DirectMaxPool::for_node(model, model.node(order[order.len() - 1])).unwrap()
    }

    #[test]
    fn matches_tracts_max_pool() {
        for (input, size) in [
            (&[1, 128, 7, 7][..], 5),
            (&[1, 3, 7, 7], 5),
            (&[90, 6, 11], 3),
            (&[2, 1, 1], 5),
            (&[4, 9, 2], 7),
        ] {
            let model = max_pool_model(input, size, size / 2, 1);
            let mut direct = model.clone();
            let op = direct_for_last(&direct).unwrap_or_else(|| panic!("{input:?}: not taken"));
            let node = direct.node(direct.eval_order().unwrap().pop().unwrap());
            let patch =
                TypedModelPatch::replace_single_op(&direct, node, &node.inputs, op).unwrap();
            patch.apply(&mut direct).unwrap();
            let count: usize = input.iter().product();
            // All negative, so a padding value of zero would win somewhere.
            let negative: Vec<f32> = values(count, 6).iter().map(|v| v - 1.0).collect();
            let x = Tensor::from_shape(input, &negative).unwrap();
            let (got, want) = (run_optimised(direct, &x), run_optimised(model, &x));
            assert_eq!(got[0], want[0], "{input:?}, {size}x{size}");
        }
    }

    #[test]
    fn other_pools_are_left_to_tract() {
        for (size, pad, stride) in [(2, 0, 2), (3, 1, 2), (5, 1, 1), (4, 2, 1)] {
            let model = max_pool_model(&[1, 8, 8, 8], size, pad, stride);
            assert!(
                direct_for_last(&model).is_none(),
                "{size}x{size}, pad {pad}, stride {stride}"
            );
        }
    }
}
