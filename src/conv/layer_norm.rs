//! Layer normalisation over the last axis in one op (the SS2D blocks' 8
//! `LayerNorm`s, over token rows of 64 to 256 channels).
//!
//! tract expands ONNX's `LayerNormalization` into a sum over the axis, its
//! scaling to the mean, the difference from the mean and the `RmsNorm` of
//! that difference: four ops, each a pass over the map, two of them writing
//! a copy of it (0.3 ms a frame on the AMD EPYC VM, docs/performance.md).
//! [`DirectLayerNorm`] takes each row's mean and variance and writes the
//! normalised row while it is in cache. The learned scale and shift after
//! it stay tract's, which fuses them with the element-wise ops that follow.

use super::eval_same_shape;
use crate::infer::on_tract_threads;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::math::{Mul, Sub};
use tract_core::ops::nn::{Reduce, Reducer, RmsNorm};
use tract_hir::internal::*;

/// `(x - mean) / sqrt(variance + epsilon)` of each row of an f32 `[1, C, H,
/// W]` or `[C, H, W]` input along W, mean and variance taken over the row.
#[derive(Clone, Debug, PartialEq)]
pub struct DirectLayerNorm {
    /// Finite (so that the op's equality is one, as tract's op graph needs).
    epsilon: f32,
}

impl Eq for DirectLayerNorm {}

/// Values a thread task normalises at least (whole rows).
const MIN_TASK_VALUES: usize = 8192;

/// Lanes of the partial sums, so that the compiler keeps them in vector
/// registers (f32 addition is not associative: it will not reorder one sum).
const LANES: usize = 16;

impl DirectLayerNorm {
    /// The layer normalisation that `node` ends, with the input it reads, if
    /// `node` is the `RmsNorm` of tract's expansion over an f32 input's last
    /// axis: `RmsNorm(x - Sum(x) * (1 / n))`.
    pub(super) fn for_node(
        model: &TypedModel,
        node: &TypedNode,
    ) -> TractResult<Option<(Self, OutletId)>> {
        let Some(norm) = node.op_as::<RmsNorm>() else {
            return Ok(None);
        };
        let difference = model.node(node.inputs[0].node);
        let &[x, mean] = &difference.inputs[..] else {
            return Ok(None);
        };
        let is_bin = |node: &TypedNode, bin: fn(&TypedBinOp) -> bool| {
            node.op_as::<TypedBinOp>().is_some_and(bin)
        };
        if !is_bin(difference, |op| op.0.is::<Sub>()) {
            return Ok(None);
        }
        let mean = model.node(mean.node);
        if !is_bin(mean, |op| op.0.is::<Mul>()) || mean.inputs.len() != 2 {
            return Ok(None);
        }
        let fact = model.outlet_fact(x)?;
        // `eval_same_shape`'s `[1, C, H, W]` or `[C, H, W]`: rows along W.
        let (Some(&[1, _, _, width]) | Some(&[_, _, width])) = fact.shape.as_concrete() else {
            return Ok(None);
        };
        let axis = fact.rank() - 1;
        let sum_of_x = |outlet: OutletId| {
            let sum = model.node(outlet.node);
            sum.inputs == [x]
                && sum.op_as::<Reduce>().is_some_and(|reduce| {
                    reduce.reducer == Reducer::Sum && reduce.axes[..] == [axis]
                })
        };
        let reciprocal_of_width = |outlet: OutletId| -> TractResult<bool> {
            let Some(konst) = &model.outlet_fact(outlet)?.konst else {
                return Ok(false);
            };
            let konst = konst.cast_to::<f32>()?;
            let values = konst.try_as_plain_ram()?;
            let values = values.as_slice::<f32>()?;
            Ok(values.len() == 1 && (values[0] * width as f32 - 1.0).abs() < 1e-6)
        };
        let [a, b] = [mean.inputs[0], mean.inputs[1]];
        let mean_of_x =
            (sum_of_x(a) && reciprocal_of_width(b)?) || (sum_of_x(b) && reciprocal_of_width(a)?);
        if !mean_of_x || norm.axis != axis || fact.datum_type != f32::datum_type() || width == 0 {
            return Ok(None);
        }
        let epsilon = norm.eps.cast_to_scalar::<f32>()?;
        Ok(epsilon
            .is_finite()
            .then_some((DirectLayerNorm { epsilon }, x)))
    }
}

/// Normalises each row of `width` values of `input` into `output`.
fn normalise_rows(input: &[f32], width: usize, epsilon: f32, output: &mut [f32]) {
    for (row, out) in input
        .chunks_exact(width)
        .zip(output.chunks_exact_mut(width))
    {
        let count = width as f32;
        let mean = lane_sum(row, |x| x) / count;
        let variance = lane_sum(row, |x| (x - mean) * (x - mean)) / count;
        let scale = 1.0 / (variance + epsilon).sqrt();
        for (out, &x) in out.iter_mut().zip(row) {
            *out = (x - mean) * scale;
        }
    }
}

/// The sum of `term` over `values`, in [`LANES`] partial sums.
#[inline(always)]
fn lane_sum(values: &[f32], term: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().map(|&x| term(x)).sum();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += term(x);
        }
    }
    lanes.iter().sum::<f32>() + rest
}

impl Op for DirectLayerNorm {
    fn name(&self) -> StaticName {
        "DirectLayerNorm".into()
    }

    op_as_typed_op!();
}

impl EvalOp for DirectLayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        eval_same_shape("DirectLayerNorm", inputs, |input, (_, _, width), output| {
            ensure!(width > 0, "DirectLayerNorm: rows of no values");
            let rows_per_task = MIN_TASK_VALUES.div_ceil(width);
            let tasks: Vec<_> = input
                .chunks(rows_per_task * width)
                .zip(output.chunks_mut(rows_per_task * width))
                .collect();
            on_tract_threads(tasks, |(input, output)| {
                normalise_rows(input, width, self.epsilon, output)
            });
            Ok(())
        })
    }
}

impl TypedOp for DirectLayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].rank() > 0, "DirectLayerNorm: a scalar input");
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::test_support::{assert_close, run_optimised, values};
    use crate::conv::{use_direct_convolutions, Replaced};
    use tract_core::ops::math::{mul, sub};

    /// `x` shaped `input` normalised along `axis` as tract leaves ONNX's
    /// `LayerNormalization` once decluttered: `RmsNorm(x - Sum(x) * (1 /
    /// n))`.
    fn expanded_layer_norm(input: &[usize], axis: usize) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact(input)).unwrap();
        let reduce = Reduce::new(tvec!(axis), Reducer::Sum);
        let sum = model.wire_node("sum", reduce, &[x]).unwrap();
        let ones = tvec![1; input.len()];
        let reciprocal = tensor0(1.0 / input[axis] as f32).broadcast_into_rank(ones.len());
        let reciprocal = model.add_const("reciprocal", reciprocal.unwrap()).unwrap();
        let mean = model
            .wire_node("mean", mul(), &[sum[0], reciprocal])
            .unwrap();
        let difference = model.wire_node("difference", sub(), &[x, mean[0]]).unwrap();
        let eps = Arc::new(tensor0(1e-5f32));
        let norm = RmsNorm { axis, eps };
        let y = model.wire_node("norm", norm, &difference).unwrap();
        model.select_output_outlets(&y).unwrap();
        model
    }

    #[test]
    fn a_layer_norm_over_the_last_axis_is_one_op_with_tracts_values() {
        // Rows shorter than the partial sums' lanes, with a remainder, and
        // the model's widest; values far from zero, so that the mean counts.
        for input in [&[1, 6, 37][..], &[5, 3, 7], &[1, 2, 3, 256]] {
            let model = expanded_layer_norm(input, input.len() - 1);
            let mut direct = model.clone();
            let replaced = use_direct_convolutions(&mut direct).unwrap();
            let want = Replaced {
                layer_norm: 1,
                ..Replaced::default()
            };
            assert_eq!(replaced, want, "{input:?}");
            let optimised = direct.clone().into_optimized().unwrap();
            let ops: Vec<_> = optimised.nodes().iter().map(|n| n.op().name()).collect();
            assert_eq!(ops, ["Source", "DirectLayerNorm"], "{input:?}");
            let count = input.iter().product();
            let shifted: Vec<f32> = values(count, 4).iter().map(|v| 3.0 + 2.0 * v).collect();
            let x = Tensor::from_shape(input, &shifted).unwrap();
            let (got, want) = (run_optimised(direct, &x), run_optimised(model, &x));
            assert_close(&got[0], &want[0], &format!("{input:?}"));
        }
    }

    #[test]
    fn a_layer_norm_over_another_axis_is_left_to_tract() {
        let model = expanded_layer_norm(&[1, 6, 5, 7], 2);
        let mut direct = model.clone();
        assert_eq!(use_direct_convolutions(&mut direct).unwrap().layer_norm, 0);
    }
}
