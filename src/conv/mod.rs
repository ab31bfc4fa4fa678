//! Direct 3x3 convolutions for tract (part of inference).
//!
//! tract runs a convolution as im2col plus a matrix product. Where a layer
//! has few output channels (the stem's 12 -> 16 at 112x112) each input value
//! it packs feeds few multiply-adds, and packing costs more than the product
//! (18 G multiply-adds a second there, against 45-59 on 64 channels; see
//! docs/performance.md). [`use_direct_convolutions`] swaps the model's 3x3,
//! stride-1, zero-padded-by-one convolutions over rows of at least
//! [`MIN_WIDTH`] pixels for [`DirectConv3x3`] before tract optimises the
//! model, on CPUs that have a kernel for it ([`kernel`]): it multiplies
//! straight from the NCHW input, with the borders read as zeros, so there is
//! neither an im2col buffer nor a padded copy. Elsewhere tract's own
//! convolution stays.

mod kernel;

use std::sync::Arc;
use tract_core::ops::cnn::conv::{Conv, KernelFormat};
use tract_core::ops::cnn::PaddingSpec;
use tract_core::ops::nn::DataFormat;
use tract_hir::internal::*;

pub use kernel::Kernel;
use kernel::OUTPUT_CHANNEL_BLOCK;

/// Narrower rows leave a 32-pixel register block half empty: a prototype of
/// the AVX-512 loop ran at 43 G multiply-adds a second at 14x14, against
/// 80-84 at 28x28 and wider; tract reaches 45-59 on 64-channel layers.
pub const MIN_WIDTH: usize = 28;

/// A 3x3, stride-1 convolution of an f32 `[1, C, H, W]` or `[C, H, W]` input
/// (tract drops the batch axis where it can), padded by one
/// zero on every side, with a bias: tract's `Conv` computed by a direct
/// [`Kernel`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectConv3x3 {
    /// The weights in the kernels' order (see [`kernel::pack_weights`]).
    weights: Arc<Tensor>,
    /// One per output channel.
    bias: Arc<Tensor>,
    input_channels: usize,
    output_channels: usize,
}

impl DirectConv3x3 {
    /// The direct convolution that computes `node` (a `Conv`), if it is one
    /// this module handles: 3x3, stride 1, dilation 1, one zero of padding a
    /// side, one group, f32, NCHW with a batch of 1 or CHW, rows at least [`MIN_WIDTH`]
    /// wide, output channels in whole blocks, constant weights and bias.
    fn for_node(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Self>> {
        let Some(conv) = node.op_as::<Conv>() else {
            return Ok(None);
        };
        let spec = &conv.pool_spec;
        let ones = |v: &Option<TVec<usize>>| v.as_ref().is_none_or(|v| v.iter().all(|&x| x == 1));
        let padded_by_one = match &spec.padding {
            PaddingSpec::Explicit(before, after)
            | PaddingSpec::ExplicitOnnxPool(before, after, _) => {
                before.iter().chain(after).all(|&p| p == 1)
            }
            PaddingSpec::SameUpper | PaddingSpec::SameLower => true,
            PaddingSpec::Valid => false,
        };
        if conv.group != 1
            || conv.q_params.is_some()
            || conv.kernel_fmt != KernelFormat::OIHW
            || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
            || *spec.kernel_shape != [3, 3]
            || !ones(&spec.strides)
            || !ones(&spec.dilations)
            || !padded_by_one
            || spec.output_channels % OUTPUT_CHANNEL_BLOCK != 0
        {
            return Ok(None);
        }
        let input = model.outlet_fact(node.inputs[0])?;
        let Some(shape) = input.shape.as_concrete() else {
            return Ok(None);
        };
        let image = match (spec.data_format, shape) {
            (DataFormat::NCHW, &[1, c, h, w]) | (DataFormat::CHW, &[c, h, w]) => [c, h, w],
            _ => return Ok(None),
        };
        if input.datum_type != f32::datum_type() || image[2] < MIN_WIDTH {
            return Ok(None);
        }
        let constant = |ix: usize| model.outlet_fact(node.inputs[ix]).map(|f| f.konst.clone());
        let (Some(weights), Some(bias)) = (constant(1)?, constant(2)?) else {
            return Ok(None);
        };
        let (input_channels, output_channels) = (spec.input_channels, spec.output_channels);
        if weights.datum_type() != f32::datum_type()
            || weights.shape() != [output_channels, input_channels, 3, 3]
            || bias.datum_type() != f32::datum_type()
            || !(bias.len() == output_channels || bias.len() == 1)
        {
            return Ok(None);
        }
        let bias = bias.try_as_plain_ram()?;
        let bias = bias.as_slice::<f32>()?;
        let bias: Vec<f32> = (0..output_channels).map(|o| bias[o % bias.len()]).collect();
        let weights = weights.try_as_plain_ram()?;
        let weights = kernel::pack_weights(weights.as_slice::<f32>()?, input_channels);
        Ok(Some(DirectConv3x3 {
            weights: Arc::new(tensor1(&weights)),
            bias: Arc::new(tensor1(&bias)),
            input_channels,
            output_channels,
        }))
    }
}

/// Replaces every convolution of `model` that [`DirectConv3x3`] handles, if
/// this CPU has a kernel for it; returns how many it replaced.
pub fn use_direct_convolutions(model: &mut TypedModel) -> TractResult<usize> {
    let Some(kernel) = Kernel::best() else {
        return Ok(0);
    };
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        if let Some(direct) = DirectConv3x3::for_node(model, node)? {
            let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs[..1], direct)?;
            patch.apply(model)?;
            replaced += 1;
        }
    }
    log::debug!(
        "{replaced} convolutions run by fer-edge's direct 3x3 kernel ({})",
        kernel.name()
    );
    Ok(replaced)
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
        let channel_axis = shape.len() - 3;
        shape[channel_axis] = self.output_channels;
        let mut output = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        kernel.run(
            input.try_as_plain_ram()?.as_slice::<f32>()?,
            (channels, height, width),
            self.weights.try_as_plain_ram()?.as_slice::<f32>()?,
            self.bias.try_as_plain_ram()?.as_slice::<f32>()?,
            output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        );
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for DirectConv3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape = inputs[0].shape.clone();
        ensure!(
            matches!(shape.len(), 3 | 4),
            "DirectConv3x3: input of rank {}",
            shape.len()
        );
        shape.set(shape.len() - 3, self.output_channels.to_dim());
        Ok(tvec!(f32::fact(shape)))
    }

    as_op!();
}
