//! Direct 3x3 convolutions for tract (part of inference).
//!
//! tract runs a convolution as a padded copy, im2col and a matrix product.
//! Where a layer has few output channels (the stem's 12 -> 16 at 112x112)
//! each input value it packs feeds few multiply-adds, and packing costs more
//! than the product (18 G multiply-adds a second there, against 45-59 on 64
//! channels; see docs/performance.md). [`use_direct_convolutions`] swaps the
//! model's dense 3x3 convolutions, zero-padded by one, at stride 1 or 2, for
//! [`DirectConv3x3`] before tract optimises the model, on CPUs that have a
//! kernel for it (`kernel`). It multiplies straight from the input, in one
//! of two [`Tiling`]s: row pixels for stride 1 over wide rows (borders read
//! as zeros, no copy at all; AVX-512 only), output channels elsewhere (from
//! a zero-padded copy, no im2col; every layer on AVX2). [`DirectPointwise`]
//! does the same for the pointwise (1x1) convolutions and the matrix
//! products that are the same thing (over channel-first maps, over tokens,
//! or from tokens into a map), whose inputs tract packs for its matrix
//! kernel; [`declutter`] keeps tract from splitting those of a `Concat` into
//! a product per part, so that one [`DirectPointwise`] reads the parts where
//! they lie. Elsewhere tract's own convolution stays.
//! The `Silu` after a replaced convolution is folded into it, applied to
//! each block of output as it is finished.

mod depthwise;
mod kernel;
mod max_pool;
mod pointwise;
#[cfg(test)]
mod test_support;

use std::sync::Arc;
use tract_core::ops::cnn::conv::{Conv, KernelFormat};
use tract_core::ops::cnn::PaddingSpec;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::nn::{DataFormat, Silu};
use tract_hir::internal::*;

pub use depthwise::DirectDepthwise3x3;
pub use kernel::{
    pack_weights, pack_weights_1x1, Activation, Channels, Kernel, Layer, PointwiseLayer, Tiling,
};
pub use max_pool::DirectMaxPool;
pub use pointwise::DirectPointwise;

/// A 3x3 convolution at stride 1 or 2 of an f32 `[1, C, H, W]` or
/// `[C, H, W]` input (tract drops the batch axis where it can), padded by one
/// zero on every side, with a bias: tract's `Conv` computed by a direct
/// [`Kernel`] in one of its [`Tiling`]s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectConv3x3 {
    tiling: Tiling,
    stride: usize,
    /// The weights in the tiling's order (see [`kernel::pack_weights`]).
    weights: Arc<Tensor>,
    /// One per output channel.
    bias: Arc<Tensor>,
    input_channels: usize,
    output_channels: usize,
    /// Linear, or SiLU once [`use_direct_convolutions`] folds in the `Silu`
    /// after it.
    activation: Activation,
}

/// The output size of a 3x3 convolution padded by one along an axis of
/// `size` at `stride`.
fn output_size(size: usize, stride: usize) -> usize {
    (size - 1) / stride + 1
}

/// A 3x3 convolution of an f32 `[1, C, H, W]` or `[C, H, W]` input at
/// stride 1 or 2 on both axes, dilation 1, padded by one zero on every side,
/// with constant f32 weights and bias: what the direct ops read of tract's
/// `Conv` before each checks its own grouping and shape.
struct PaddedConv3x3 {
    stride: usize,
    group: usize,
    /// The input's channels, height and width.
    input: (usize, usize, usize),
    output_channels: usize,
    /// OIHW: `[output_channels, input_channels / group, 3, 3]`.
    weights: Arc<Tensor>,
    /// One per output channel (a single bias value repeated).
    bias: Vec<f32>,
}

impl PaddedConv3x3 {
    /// What `node` computes, if it is such a convolution.
    fn of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Self>> {
        let Some(conv) = node.op_as::<Conv>() else {
            return Ok(None);
        };
        let spec = &conv.pool_spec;
        let all = |v: &Option<TVec<usize>>, n: usize| {
            v.as_ref().map_or(n == 1, |v| v.iter().all(|&x| x == n))
        };
        let stride = if all(&spec.strides, 1) {
            1
        } else if all(&spec.strides, 2) {
            2
        } else {
            return Ok(None);
        };
        let padded_by_one = match &spec.padding {
            PaddingSpec::Explicit(before, after)
            | PaddingSpec::ExplicitOnnxPool(before, after, _) => {
                before.iter().chain(after).all(|&p| p == 1)
            }
            // "Same" pads a 3x3 by one a side only at stride 1.
            PaddingSpec::SameUpper | PaddingSpec::SameLower => stride == 1,
            PaddingSpec::Valid => false,
        };
        if conv.q_params.is_some()
            || conv.kernel_fmt != KernelFormat::OIHW
            || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
            || *spec.kernel_shape != [3, 3]
            || !all(&spec.dilations, 1)
            || !padded_by_one
        {
            return Ok(None);
        }
        let input = model.outlet_fact(node.inputs[0])?;
        let Some(shape) = input.shape.as_concrete() else {
            return Ok(None);
        };
        let (height, width) = match (spec.data_format, shape) {
            (DataFormat::NCHW, &[1, _, h, w]) | (DataFormat::CHW, &[_, h, w]) => (h, w),
            _ => return Ok(None),
        };
        let constant = |ix: usize| model.outlet_fact(node.inputs[ix]).map(|f| f.konst.clone());
        let (Some(weights), Some(bias)) = (constant(1)?, constant(2)?) else {
            return Ok(None);
        };
        let (input_channels, output_channels) = (spec.input_channels, spec.output_channels);
        let group = conv.group;
        if input.datum_type != f32::datum_type()
            || input_channels % group != 0
            || weights.datum_type() != f32::datum_type()
            || weights.shape() != [output_channels, input_channels / group, 3, 3]
            || bias.datum_type() != f32::datum_type()
            || !(bias.len() == output_channels || bias.len() == 1)
        {
            return Ok(None);
        }
        let bias = bias.try_as_plain_ram()?;
        let bias = bias.as_slice::<f32>()?;
        Ok(Some(PaddedConv3x3 {
            stride,
            group,
            input: (input_channels, height, width),
            output_channels,
            weights,
            bias: (0..output_channels).map(|o| bias[o % bias.len()]).collect(),
        }))
    }
}

impl DirectConv3x3 {
    /// The direct convolution that computes `node` (a `Conv`), if it is one
    /// this module handles: a [`PaddedConv3x3`] of one group, in a shape
    /// this CPU's [`Kernel`] has a [`Tiling`] for, output channels in whole
    /// blocks of it.
    fn for_node(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Self>> {
        let Some(conv) = PaddedConv3x3::of(model, node)? else {
            return Ok(None);
        };
        let (input_channels, height, width) = conv.input;
        let out = (
            output_size(height, conv.stride),
            output_size(width, conv.stride),
        );
        let tiling = Kernel::best().and_then(|kernel| kernel.tiling(conv.stride, out));
        let Some(tiling) = tiling else {
            return Ok(None);
        };
        if conv.group != 1 || conv.output_channels % tiling.block() != 0 {
            return Ok(None);
        }
        let weights = conv.weights.try_as_plain_ram()?;
        let weights = kernel::pack_weights(weights.as_slice::<f32>()?, input_channels, tiling);
        Ok(Some(DirectConv3x3 {
            tiling,
            stride: conv.stride,
            weights: Arc::new(tensor1(&weights)),
            bias: Arc::new(tensor1(&conv.bias)),
            input_channels,
            output_channels: conv.output_channels,
            activation: Activation::Linear,
        }))
    }
}

/// Evaluates an op whose f32 output has the shape of its one input, `[1, C,
/// H, W]` or `[C, H, W]`: `compute(input, (C, H, W), output)` must write
/// every output value or fail. `op` names the op in errors.
fn eval_same_shape(
    op: &str,
    inputs: TVec<TValue>,
    compute: impl FnOnce(&[f32], (usize, usize, usize), &mut [f32]) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    let input = args_1!(inputs);
    let (&[1, channels, height, width] | &[channels, height, width]) = input.shape() else {
        bail!(
            "{op}: input shape {:?} is not [1, C, H, W] or [C, H, W]",
            input.shape()
        );
    };
    // SAFETY: f32 has no invalid bit patterns, and `compute` writes every
    // output element.
    let mut output = unsafe { Tensor::uninitialized::<f32>(input.shape())? };
    compute(
        input.try_as_plain_ram()?.as_slice::<f32>()?,
        (channels, height, width),
        output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
    )?;
    Ok(tvec!(output.into_tvalue()))
}

/// How many of a model's nodes [`use_direct_convolutions`] replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replaced {
    /// 3x3 convolutions, by [`DirectConv3x3`].
    pub conv3x3: usize,
    /// Depthwise 3x3 convolutions, by [`DirectDepthwise3x3`].
    pub depthwise: usize,
    /// Max pools, by [`DirectMaxPool`].
    pub max_pool: usize,
    /// Pointwise convolutions and the matrix products like them, by
    /// [`DirectPointwise`].
    pub pointwise: usize,
    /// `Silu`s folded into the direct convolution before them.
    pub silu: usize,
}

/// Replaces every depthwise convolution [`DirectDepthwise3x3`] handles and
/// every max pool [`DirectMaxPool`] handles (on any CPU) and, if this CPU
/// has a [`Kernel`], every convolution [`DirectConv3x3`] or
/// [`DirectPointwise`] handles, folding the `Silu` that follows one of those
/// or a depthwise convolution into it.
pub fn use_direct_convolutions(model: &mut TypedModel) -> TractResult<Replaced> {
    let depthwise = replace_each(model, DirectDepthwise3x3::for_node)?;
    let max_pool = replace_each(model, DirectMaxPool::for_node)?;
    let Some(kernel) = Kernel::best() else {
        return Ok(Replaced {
            depthwise,
            max_pool,
            ..Replaced::default()
        });
    };
    let conv3x3 = replace_each(model, DirectConv3x3::for_node)?;
    let pointwise = pointwise::use_direct_pointwise(model)?;
    let silu = fold_silu(model)?;
    log::debug!(
        "fer-edge's direct kernels ({}) run {conv3x3} 3x3, {depthwise} depthwise and \
         {pointwise} pointwise convolutions, {silu} with their SiLU, and {max_pool} max pools",
        kernel.name()
    );
    Ok(Replaced {
        conv3x3,
        depthwise,
        max_pool,
        pointwise,
        silu,
    })
}

/// Declutters `model` as tract does, except where this CPU has a [`Kernel`]:
/// there tract's pass that splits a product over a `Concat` into a product
/// per part and their sum leaves alone the products [`DirectPointwise`]
/// computes from the parts where they lie.
pub fn declutter(model: &mut TypedModel) -> TractResult<()> {
    let mut optimizer = tract_core::optim::Optimizer::declutter();
    if Kernel::best().is_some() {
        for pass in &mut optimizer.passes {
            if format!("{pass:?}").starts_with("ConcatThenEinsum") {
                *pass = Box::new(pointwise::SplitOtherConcatProducts(pass.clone()));
            }
        }
    }
    optimizer.optimize(model)
}

/// Replaces each node of `model` for which `direct` gives an op (reading
/// the node's first input only) by that op; returns how many.
fn replace_each<Direct: TypedOp>(
    model: &mut TypedModel,
    direct: impl Fn(&TypedModel, &TypedNode) -> TractResult<Option<Direct>>,
) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        if let Some(op) = direct(model, node)? {
            let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs[..1], op)?;
            patch.apply(model)?;
            replaced += 1;
        }
    }
    Ok(replaced)
}

/// Folds every `Silu` that is the only successor of a direct convolution
/// (dense, depthwise or pointwise; whose own output is not one of the
/// model's) into it; returns how many.
fn fold_silu(model: &mut TypedModel) -> TractResult<usize> {
    let mut folded = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let with_silu: Box<dyn TypedOp> = if let Some(conv) = node.op_as::<DirectConv3x3>() {
            Box::new(DirectConv3x3 {
                activation: Activation::Silu,
                ..conv.clone()
            })
        } else if let Some(pointwise) = node.op_as::<DirectPointwise>() {
            Box::new(pointwise.with_silu())
        } else if let Some(depthwise) = node.op_as::<DirectDepthwise3x3>() {
            Box::new(depthwise.with_silu())
        } else {
            continue;
        };
        let ([successor], false) = (
            &node.outputs[0].successors[..],
            model.outputs.contains(&id.into()),
        ) else {
            continue;
        };
        let silu = model.node(successor.node);
        if !silu
            .op_as::<ElementWiseOp>()
            .is_some_and(|op| op.0.is::<Silu>())
        {
            continue;
        }
        let mut patch = TypedModelPatch::default();
        let inputs = patch.taps(model, &node.inputs)?;
        let output = patch.wire_node(&node.name, with_silu, &inputs)?;
        patch.shunt_outside(model, silu.id.into(), output[0])?;
        patch.apply(model)?;
        folded += 1;
    }
    Ok(folded)
}

impl Op for DirectConv3x3 {
    fn name(&self) -> StaticName {
        "DirectConv3x3".into()
    }

    op_as_typed_op!();
}

impl EvalOp for DirectConv3x3 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let kernel = Kernel::best().context("no direct convolution kernel for this CPU")?;
        let input = args_1!(inputs);
        let (&[1, channels, height, width] | &[channels, height, width]) = input.shape() else {
            bail!(
                "DirectConv3x3: input shape {:?} is not [1, C, H, W] or [C, H, W]",
                input.shape()
            );
        };
        ensure!(
            channels == self.input_channels,
            "DirectConv3x3: {channels} input channels, expected {}",
            self.input_channels
        );
        // SAFETY: f32 has no invalid bit patterns, and the kernel writes every
        // output element.
        let mut shape: TVec<usize> = input.shape().into();
        let rank = shape.len();
        shape[rank - 3] = self.output_channels;
        shape[rank - 2] = output_size(height, self.stride);
        shape[rank - 1] = output_size(width, self.stride);
        let mut output = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        let layer = Layer {
            tiling: self.tiling,
            stride: self.stride,
            weights: self.weights.try_as_plain_ram()?.as_slice::<f32>()?,
            bias: self.bias.try_as_plain_ram()?.as_slice::<f32>()?,
            activation: self.activation,
        };
        kernel.run(
            &layer,
            input.try_as_plain_ram()?.as_slice::<f32>()?,
            (channels, height, width),
            output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        );
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for DirectConv3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.clone();
        let rank = shape.len();
        ensure!(matches!(rank, 3 | 4), "DirectConv3x3: input of rank {rank}");
        shape.set(rank - 3, self.output_channels.to_dim());
        for axis in [rank - 2, rank - 1] {
            let size = output_size(shape[axis].to_usize()?, self.stride);
            shape.set(axis, size.to_dim());
        }
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::test_support::{assert_close, pointwise_model, run_optimised, skip, values};

    /// `x [12, 5, 7]` -> a 1x1 convolution to 16 channels (an `EinSum` and
    /// its bias `Add`) -> `Silu`; the convolution's own output is one of the
    /// model's too when `also_linear`.
    fn pointwise_then_silu(also_linear: bool) -> TypedModel {
        let (mut model, conv) = pointwise_model(
            "IHW,OI->OHW",
            &[12, 5, 7],
            &[16, 12],
            false,
            Some(&[16, 1, 1]),
        );
        let silu = tract_core::ops::nn::silu::silu();
        let mut outputs = model.wire_node("silu", silu, &[conv]).unwrap().to_vec();
        if also_linear {
            outputs.push(conv);
        }
        model.select_output_outlets(&outputs).unwrap();
        model
    }

    #[test]
    fn a_silu_after_a_direct_convolution_is_folded_in() {
        if Kernel::best().is_none() {
            skip("a_silu_after_a_direct_convolution_is_folded_in");
            return;
        }
        for also_linear in [false, true] {
            let model = pointwise_then_silu(also_linear);
            let mut direct = model.clone();
            let replaced = use_direct_convolutions(&mut direct).unwrap();
            let want = Replaced {
                pointwise: 1,
                silu: usize::from(!also_linear),
                ..Replaced::default()
            };
            assert_eq!(replaced, want, "also_linear: {also_linear}");
            let order = direct.eval_order().unwrap();
            let ops: Vec<_> = order.iter().map(|&n| direct.node(n).op().name()).collect();
            assert_eq!(
                ops.iter().any(|op| op == "Silu"),
                also_linear,
                "also_linear: {also_linear}: {ops:?}"
            );
            let input = Tensor::from_shape(&[12, 5, 7], &values(420, 3)).unwrap();
            let (got, want) = (run_optimised(direct, &input), run_optimised(model, &input));
            assert_eq!(got.len(), want.len());
            for (output, (got, want)) in got.iter().zip(&want).enumerate() {
                assert_close(
                    got,
                    want,
                    &format!("also_linear: {also_linear}: output {output}"),
                );
            }
        }
    }
}
