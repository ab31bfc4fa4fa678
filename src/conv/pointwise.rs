//! Pointwise (1x1) convolutions and the matrix products that are the same
//! thing (the SS2D blocks' projections): `out[m][p] = bias[m] + sum_k
//! weights[m][k] in[k][p]` over the pixels p of an image whose channels come
//! first (`[K, P]`, as the convolutions and `x_proj` have them) or last
//! (`[P, K]`, the token-major `in_proj` and `out_proj`; also into a
//! channel-first output, where a product's result is permuted into a
//! feature map), computed by the
//! direct [`Kernel`] instead of tract's packing and matrix product, the
//! following bias `Add` folded in. A channel-first product of a `Concat`
//! of channel-first maps reads the maps where they lie: tract would split
//! it into a product per map and add the products up.

use super::kernel::{self, Activation, Channels, Kernel, PointwiseLayer};
use std::sync::Arc;
use tract_core::ops::array::TypedConcat;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::Add;
use tract_core::optim::{OptimizerSession, TypedPass};
use tract_hir::internal::*;

/// A pointwise convolution of an f32 input (`[K, P...]` or `[P..., K]`, with
/// any size-1 axes around) into `[M, P...]` (from either) or `[P..., M]`
/// (from `[P..., K]`), with a bias: a decluttered
/// `EinSum` with constant weights (and the `Add` of a constant bias after
/// it), computed by the direct [`Kernel`]. A `[K, P...]` input may come as
/// several inputs, the parts of a `Concat` along K in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectPointwise {
    channels: Channels,
    /// The weights in the kernel's order (see [`kernel::pack_weights_1x1`]).
    weights: Arc<Tensor>,
    /// One per output channel.
    bias: Arc<Tensor>,
    input_channels: usize,
    output_channels: usize,
    /// The replaced node's output shape, with its size-1 axes.
    output_shape: TVec<usize>,
    /// Linear, or SiLU once [`super::use_direct_convolutions`] folds in the
    /// `Silu` after it.
    activation: Activation,
}

/// Where one of an `EinSum`'s axes lies in its activations, weights and
/// output (None: absent there), and its size.
struct AxisPlace {
    activations: Option<usize>,
    weights: Option<usize>,
    output: Option<usize>,
    size: usize,
}

impl DirectPointwise {
    /// The direct pointwise convolution that computes `node` (an `EinSum`),
    /// its activations (the inputs of the `Concat` that makes them, when
    /// the channels come first and it concatenates channels) and the node
    /// whose output it replaces (the bias `Add` after it, if there is one
    /// to fold in), if it is one this module
    /// handles: f32, two inputs, constant `[M, K]` or `[K, M]` weights, one
    /// contracted axis, up to size-1 axes the activations `[K, pixels]` and
    /// the output `[M, pixels]`, or the activations channels-last and the
    /// output either way, M a whole number of the kernel's blocks, and at
    /// least a tile of pixels ([`Channels::min_pixels`]).
    fn for_node(
        model: &TypedModel,
        node: &TypedNode,
    ) -> TractResult<Option<(Self, TVec<OutletId>, usize)>> {
        let Some(einsum) = node.op_as::<EinSum>() else {
            return Ok(None);
        };
        if einsum.q_params.is_some()
            || einsum.operating_dt != f32::datum_type()
            || node.inputs.len() != 2
        {
            return Ok(None);
        }
        let facts = [
            model.outlet_fact(node.inputs[0])?,
            model.outlet_fact(node.inputs[1])?,
        ];
        let Some(w) = facts
            .iter()
            .position(|f| f.konst.is_some() && f.rank() == 2)
        else {
            return Ok(None);
        };
        let a = 1 - w;
        let output_fact = model.outlet_fact(node.id.into())?;
        let (Some(in_shape), Some(out_shape)) = (
            facts[a].shape.as_concrete(),
            output_fact.shape.as_concrete(),
        ) else {
            return Ok(None);
        };
        if facts[a].datum_type != f32::datum_type() || output_fact.datum_type != f32::datum_type() {
            return Ok(None);
        }
        let mut places = Vec::new();
        for axis in einsum.axes.iter_all_axes() {
            let once = |positions: &[usize]| match positions {
                [] => Ok(None),
                &[p] => Ok(Some(p)),
                _ => Err(()),
            };
            let (Ok(activations), Ok(weights), Ok(output)) = (
                once(&axis.inputs[a]),
                once(&axis.inputs[w]),
                once(&axis.outputs[0]),
            ) else {
                return Ok(None);
            };
            let size = match (activations, output) {
                (Some(p), _) => in_shape[p],
                (None, Some(p)) => out_shape[p],
                (None, None) => return Ok(None),
            };
            places.push(AxisPlace {
                activations,
                weights,
                output,
                size,
            });
        }
        let Some(layout) = Layout::of(&places) else {
            return Ok(None);
        };
        let (input_channels, output_channels) = (layout.k.size, layout.m.size);
        if output_channels % layout.channels.block() != 0
            || layout.pixels < layout.channels.min_pixels()
        {
            return Ok(None);
        }
        let weights = facts[w].konst.clone().expect("found constant above");
        let weights = weights.cast_to::<f32>()?;
        let weights = weights.try_as_plain_ram()?;
        let weights = weights.as_slice::<f32>()?;
        // `[M, K]` as stored, or `[K, M]` transposed.
        let m_first = layout.m.weights < layout.k.weights;
        let weight = |m: usize, k: usize| {
            weights[if m_first {
                m * input_channels + k
            } else {
                k * output_channels + m
            }]
        };
        let by_output: Vec<f32> = (0..output_channels)
            .flat_map(|m| (0..input_channels).map(move |k| (m, k)))
            .map(|(m, k)| weight(m, k))
            .collect();
        let packed = kernel::pack_weights_1x1(&by_output, input_channels, layout.channels);
        let (bias, replaced, output_shape) = match bias_add(model, node, layout.m.output)? {
            Some((bias, add)) => {
                let shape = model.outlet_fact(add.into())?.shape.as_concrete();
                (bias, add, shape.map(TVec::from))
            }
            None => (vec![0.0; output_channels], node.id, Some(out_shape.into())),
        };
        let Some(output_shape) = output_shape else {
            return Ok(None);
        };
        let concatenated = match (layout.channels, layout.k.activations) {
            (Channels::First, Some(k)) => concat_parts(model, node.inputs[a], k),
            _ => None,
        };
        let activations = concatenated.unwrap_or_else(|| tvec!(node.inputs[a]));
        Ok(Some((
            DirectPointwise {
                channels: layout.channels,
                weights: Arc::new(tensor1(&packed)),
                bias: Arc::new(tensor1(&bias)),
                input_channels,
                output_channels,
                output_shape,
                activation: Activation::Linear,
            },
            activations,
            replaced,
        )))
    }

    /// This op with the `Silu` after it folded in.
    pub(super) fn with_silu(&self) -> Self {
        DirectPointwise {
            activation: Activation::Silu,
            ..self.clone()
        }
    }
}

/// The contracted axis k and the output-channel axis m of a pointwise
/// `EinSum`, and where the channels lie on each side.
struct Layout<'a> {
    k: &'a AxisPlace,
    m: &'a AxisPlace,
    channels: Channels,
    /// The product of the pixel axes' sizes.
    pixels: usize,
}

impl<'a> Layout<'a> {
    fn of(places: &'a [AxisPlace]) -> Option<Layout<'a>> {
        let [k] = places
            .iter()
            .filter(|p| p.activations.is_some() && p.weights.is_some())
            .collect::<Vec<_>>()[..]
        else {
            return None;
        };
        let [m] = places
            .iter()
            .filter(|p| p.activations.is_none() && p.weights.is_some())
            .collect::<Vec<_>>()[..]
        else {
            return None;
        };
        if k.output.is_some() || m.output.is_none() {
            return None;
        }
        // Every other axis is a pixel axis (in both the activations and the
        // output) or of size 1.
        let pixels: Vec<&AxisPlace> = places
            .iter()
            .filter(|p| p.weights.is_none() && p.size > 1)
            .collect();
        if pixels
            .iter()
            .any(|p| p.activations.is_none() || p.output.is_none())
        {
            return None;
        }
        // Ignoring size-1 axes, the activations are k and the pixels, the
        // output m and the same pixels in the same order, the channel axis
        // first on both sides, last on both, or last in and first out.
        let order = |place: fn(&AxisPlace) -> Option<usize>, channel: &AxisPlace| {
            let mut axes: Vec<(usize, usize)> = std::iter::once(channel)
                .chain(pixels.iter().copied())
                .enumerate()
                .map(|(i, p)| (place(p).expect("checked above"), i))
                .collect();
            axes.sort_unstable();
            axes.into_iter().map(|(_, i)| i).collect::<Vec<_>>()
        };
        let first: Vec<usize> = (0..=pixels.len()).collect();
        let last: Vec<usize> = (1..=pixels.len()).chain([0]).collect();
        let (input, output) = (order(|p| p.activations, k), order(|p| p.output, m));
        let channels = if input == first && output == first {
            Channels::First
        } else if input == last && output == last {
            Channels::Last
        } else if input == last && output == first {
            Channels::LastToFirst
        } else {
            return None;
        };
        let pixels = pixels.iter().map(|p| p.size).product();
        Some(Layout {
            k,
            m,
            channels,
            pixels,
        })
    }
}

/// The inputs of the `Concat` that makes `activations`, if it concatenates
/// channel-first maps on their channel axis, `channel_axis` (every axis
/// before it of size 1), and none of them is a transposed one (tokens
/// turned into a map): a [`DirectPointwise`] reads them where they lie.
/// Where a part is transposed, tract's split of the product (one product
/// per part) reads the tokens as they are instead; otherwise tract would
/// move the whole concatenation to the tokens' layout and transpose the
/// other parts.
fn concat_parts(
    model: &TypedModel,
    activations: OutletId,
    channel_axis: usize,
) -> Option<TVec<OutletId>> {
    let node = model.node(activations.node);
    let concat = node.op_as::<TypedConcat>()?;
    let shape = &model.outlet_fact(activations).ok()?.shape;
    let channel_first = (0..channel_axis).all(|axis| shape[axis].is_one());
    let transposed = |part: &OutletId| model.node(part.node).op_is::<AxisOp>();
    (concat.axis == channel_axis && channel_first && !node.inputs.iter().any(transposed))
        .then(|| node.inputs.iter().copied().collect())
}

/// Whether `node` is a product a [`DirectPointwise`] would likely compute
/// from the parts of a `Concat` ([`concat_parts`]), summing over the
/// concatenated axis. A likely one, as tract's declutter meets it before
/// its weights are folded into a constant: [`SplitOtherConcatProducts`]
/// leaves it whole, and tract splits it when it optimises the model if no
/// [`DirectPointwise`] took it.
fn reads_concat_parts(model: &TypedModel, node: &TypedNode) -> bool {
    let Some(einsum) = node.op_as::<EinSum>() else {
        return false;
    };
    node.inputs.iter().enumerate().any(|(slot, &input)| {
        let Some(concat) = model.node(input.node).op_as::<TypedConcat>() else {
            return false;
        };
        let summed = einsum
            .axes
            .axis((InOut::In(slot), concat.axis))
            .is_ok_and(|axis| axis.outputs[0].is_empty());
        summed && concat_parts(model, input, concat.axis).is_some()
    })
}

/// The bias of the `Add` that is `node`'s only successor, if it adds a
/// constant of one value per output channel (at `m_axis` of `node`'s
/// output) and nothing else, with that `Add`'s node id.
fn bias_add(
    model: &TypedModel,
    node: &TypedNode,
    m_axis: Option<usize>,
) -> TractResult<Option<(Vec<f32>, usize)>> {
    let (Some(m_axis), [successor]) = (m_axis, &node.outputs[0].successors[..]) else {
        return Ok(None);
    };
    let add = model.node(successor.node);
    let is_add = add
        .op_as::<TypedBinOp>()
        .is_some_and(|bin| bin.0.is::<Add>() && bin.1.is_none());
    if !is_add || add.inputs.len() != 2 {
        return Ok(None);
    }
    let other = add.inputs[1 - successor.slot];
    let Some(bias) = model.outlet_fact(other)?.konst.clone() else {
        return Ok(None);
    };
    let out_rank = model.outlet_fact(node.id.into())?.rank();
    let add_rank = model.outlet_fact(add.id.into())?.rank();
    if bias.datum_type() != f32::datum_type() || add_rank < out_rank {
        return Ok(None);
    }
    // Broadcasting aligns the trailing axes: the channel axis of the sum.
    let channel = m_axis + add_rank - out_rank;
    let Some(offset) = add_rank.checked_sub(bias.rank()) else {
        return Ok(None);
    };
    let per_channel = bias
        .shape()
        .iter()
        .enumerate()
        .all(|(i, &size)| size == 1 || (i + offset == channel && size == bias.len()));
    if !per_channel {
        return Ok(None);
    }
    let bias = bias.try_as_plain_ram()?;
    let values = bias.as_slice::<f32>()?;
    let channels = model.outlet_fact(node.id.into())?.shape[m_axis].to_usize()?;
    Ok(Some((
        (0..channels).map(|m| values[m % values.len()]).collect(),
        add.id,
    )))
}

/// tract's declutter pass that splits a product over a `Concat` into a
/// product per part and their sum, kept from the products a
/// [`DirectPointwise`] would compute from the parts themselves.
#[derive(Clone, Debug)]
pub(super) struct SplitOtherConcatProducts(pub(super) Box<dyn TypedPass>);

impl TypedPass for SplitOtherConcatProducts {
    fn reset(&mut self) -> TractResult<()> {
        self.0.reset()
    }

    fn next(
        &mut self,
        session: &mut OptimizerSession,
        model: &TypedModel,
    ) -> TractResult<Option<TypedModelPatch>> {
        while let Some(patch) = self.0.next(session, model)? {
            let splits = |outlet: &OutletId| reads_concat_parts(model, model.node(outlet.node));
            if !patch.shunts.keys().any(splits) {
                return Ok(Some(patch));
            }
        }
        Ok(None)
    }
}

/// Replaces every pointwise convolution of `model` that [`DirectPointwise`]
/// handles (and the bias `Add` after it) by one, if this CPU has a kernel;
/// returns how many it replaced.
pub(super) fn use_direct_pointwise(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some((op, activations, last)) = DirectPointwise::for_node(model, node)? else {
            continue;
        };
        let mut patch = TypedModelPatch::default();
        let inputs = patch.taps(model, &activations)?;
        let output = patch.wire_node(&node.name, op, &inputs)?;
        patch.shunt_outside(model, last.into(), output[0])?;
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

impl Op for DirectPointwise {
    fn name(&self) -> StaticName {
        "DirectPointwise".into()
    }

    op_as_typed_op!();
}

impl EvalOp for DirectPointwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let kernel = Kernel::best().context("no direct convolution kernel for this CPU")?;
        let pixels = self.output_shape.iter().product::<usize>() / self.output_channels;
        let parts = inputs
            .iter()
            .map(|input| input.try_as_plain_ram()?.as_slice::<f32>())
            .collect::<TractResult<TVec<&[f32]>>>()?;
        ensure!(
            parts.iter().all(|part| part.len() % pixels == 0)
                && parts.iter().map(|part| part.len()).sum::<usize>()
                    == self.input_channels * pixels,
            "DirectPointwise: input shapes {:?} do not hold {} channels of the output's {pixels} pixels",
            inputs.iter().map(|input| input.shape()).collect::<Vec<_>>(),
            self.input_channels
        );
        // SAFETY: f32 has no invalid bit patterns, and the kernel writes every
        // output element.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        let layer = PointwiseLayer {
            channels: self.channels,
            weights: self.weights.try_as_plain_ram()?.as_slice::<f32>()?,
            bias: self.bias.try_as_plain_ram()?.as_slice::<f32>()?,
            activation: self.activation,
        };
        kernel.run_pointwise(
            &layer,
            &parts,
            (self.input_channels, pixels),
            output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        );
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for DirectPointwise {
    fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&*self.output_shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::test_support::{
        assert_close, kernels, pointwise_model, run_optimised, skip, values, wire_pointwise,
    };

    #[test]
    fn kernels_compute_the_products() {
        for kernel in kernels("kernels_compute_the_products") {
            products_of(kernel);
        }
    }

    /// `kernel`'s pointwise convolutions against their definition.
    fn products_of(kernel: Kernel) {
        // Pixel counts around the kernels' registers and tiles.
        let cases = [
            (Channels::First, 128, 288, 784),
            (Channels::First, 3, 8, 1),
            (Channels::First, 5, 16, 49),
            (Channels::First, 64, 8, 33),
            (Channels::First, 1, 24, 32),
            (Channels::First, 4, 40, 5),
            (Channels::Last, 128, 256, 784),
            (Channels::Last, 3, 32, 7),
            (Channels::Last, 5, 64, 50),
            (Channels::Last, 64, 32, 62),
            (Channels::Last, 1, 96, 69),
            (Channels::LastToFirst, 128, 256, 784),
            (Channels::LastToFirst, 3, 16, 14),
            (Channels::LastToFirst, 5, 32, 50),
            (Channels::LastToFirst, 64, 16, 62),
            (Channels::LastToFirst, 1, 48, 15),
        ];
        for (seed, &(channels, k, m, p)) in cases.iter().enumerate() {
            let input = values(k * p, seed as u32);
            let weights = values(m * k, 100 + seed as u32);
            let bias = values(m, 200 + seed as u32);
            let mut output = vec![f32::NAN; m * p];
            let packed = kernel::pack_weights_1x1(&weights, k, channels);
            let layer = PointwiseLayer {
                channels,
                weights: &packed,
                bias: &bias,
                activation: Activation::Linear,
            };
            kernel.run_pointwise(&layer, &[&input], (k, p), &mut output);
            if channels == Channels::First {
                // The same rows in three parts (the first two may be empty).
                let (a, b) = ((k / 3) * p, (2 * k / 3) * p);
                let parts = [&input[..a], &input[a..b], &input[b..]];
                let mut from_parts = vec![f32::NAN; m * p];
                kernel.run_pointwise(&layer, &parts, (k, p), &mut from_parts);
                assert_eq!(from_parts, output, "{k} -> {m} over {p} pixels, in parts");
            }
            let input_first = channels == Channels::First;
            let output_first = channels != Channels::Last;
            for (i, &got) in output.iter().enumerate() {
                let (o, pixel) = if output_first {
                    (i / p, i % p)
                } else {
                    (i % m, i / m)
                };
                let x = |c: usize| {
                    input[if input_first {
                        c * p + pixel
                    } else {
                        pixel * k + c
                    }]
                };
                let want = f64::from(bias[o])
                    + (0..k)
                        .map(|c| f64::from(weights[o * k + c]) * f64::from(x(c)))
                        .sum::<f64>();
                assert!(
                    (f64::from(got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{}: {channels:?} {k} -> {m} over {p} pixels: element {i} is {got}, \
                     expected {want}",
                    kernel.name()
                );
            }
        }
    }

    /// An `EinSum` of an input and constant weights (the weights first when
    /// `weights_first`), with a per-channel bias `Add` after it when `bias`
    /// gives its shape, and whether [`use_direct_pointwise`] should take it.
    struct Case {
        formula: &'static str,
        input: &'static [usize],
        weights: &'static [usize],
        weights_first: bool,
        bias: Option<&'static [usize]>,
        replaced: bool,
    }

    impl Case {
        fn model(&self) -> TypedModel {
            let (mut model, output) = pointwise_model(
                self.formula,
                self.input,
                self.weights,
                self.weights_first,
                self.bias,
            );
            model.select_output_outlets(&[output]).unwrap();
            model
        }
    }

    #[test]
    fn pointwise_einsums_are_replaced_and_agree() {
        if Kernel::best().is_none() {
            skip("pointwise_einsums_are_replaced_and_agree");
            return;
        }
        let case = |formula, input, weights, weights_first, bias, replaced| Case {
            formula,
            input,
            weights,
            weights_first,
            bias,
            replaced,
        };
        let cases = [
            // a decluttered 1x1 convolution and its bias
            case(
                "IHW,OI->OHW",
                &[12, 5, 7],
                &[16, 12],
                false,
                Some(&[16, 1, 1]),
                true,
            ),
            // the same with the batch axis on both sides and a 4-D bias
            case(
                "NIHW,OI->NOHW",
                &[1, 12, 5, 7],
                &[16, 12],
                false,
                Some(&[1, 16, 1, 1]),
                true,
            ),
            // x_proj: weights first, no bias
            case("mk,akbn->ambn", &[1, 8, 3, 9], &[24, 8], true, None, true),
            // weights stored [K, M]
            case(
                "IHW,IO->OHW",
                &[6, 4, 4],
                &[6, 8],
                false,
                Some(&[8, 1, 1]),
                true,
            ),
            // token-major, with a bias on the last axis
            case(
                "HWI,OI->HWO",
                &[5, 7, 12],
                &[32, 12],
                false,
                Some(&[1, 1, 32]),
                true,
            ),
            // in_proj: [1, H, W, C] tokens by [K, M] weights
            case(
                "abmk,kn->abmn",
                &[1, 4, 7, 16],
                &[16, 64],
                false,
                None,
                true,
            ),
            // token-major in, channel-first out: the fuse convolution's
            // half from the scan's tokens
            case(
                "NHWI,OI->NOHW",
                &[1, 4, 7, 16],
                &[32, 16],
                false,
                Some(&[1, 32, 1, 1]),
                true,
            ),
            // the in_proj half permuted into a channel-first map
            case(
                "abmk,kn->anbm",
                &[1, 4, 7, 16],
                &[16, 64],
                false,
                None,
                true,
            ),
            // the same with fewer pixels than a tile: tract keeps it
            case(
                "abmk,kn->anbm",
                &[1, 2, 6, 16],
                &[16, 64],
                false,
                None,
                false,
            ),
            // token-major with fewer pixels than a tile: tract keeps it
            case("HWI,OI->HWO", &[2, 3, 12], &[32, 12], false, None, false),
            // output channels not a whole block: tract keeps it
            case("IHW,OI->OHW", &[12, 5, 7], &[7, 12], false, None, false),
        ];
        for case in cases {
            let (formula, model) = (case.formula, case.model());
            let mut direct = model.clone();
            let count = use_direct_pointwise(&mut direct).unwrap();
            assert_eq!(count, usize::from(case.replaced), "{formula}");
            let order = direct.eval_order().unwrap();
            let ops: Vec<_> = order.iter().map(|&n| direct.node(n).op().name()).collect();
            if case.replaced {
                // the bias Add is folded in: nothing but the source, the op
                // (and constants) left on the way to the output
                assert!(
                    !ops.iter().any(|op| op == "Add" || op == "EinSum"),
                    "{ops:?}"
                );
            }
            let count = case.input.iter().product();
            let input = Tensor::from_shape(case.input, &values(count, 3)).unwrap();
            let got = run_optimised(direct, &input).swap_remove(0);
            let want = run_optimised(model, &input).swap_remove(0);
            assert_close(&got, &want, formula);
        }
    }

    /// `x [1, 12, 5, 7]` and a second map concatenated on the channels (the
    /// SiLU of x, or tokens `[1, 5, 7, 12]` transposed into a map when
    /// `tokens`), then a 1x1 convolution of the 24 channels to 16 (an
    /// `EinSum` and its bias `Add`), not yet decluttered.
    fn concat_then_pointwise(tokens: bool) -> TypedModel {
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 12, 5, 7])).unwrap();
        let second = if tokens {
            let t = model.add_source("t", f32::fact([1, 5, 7, 12])).unwrap();
            model.wire_node("to_map", AxisOp::Move(3, 1), &[t]).unwrap()[0]
        } else {
            let silu = tract_core::ops::nn::silu::silu();
            model.wire_node("silu", silu, &[x]).unwrap()[0]
        };
        let concat = TypedConcat { axis: 1 };
        let cat = model.wire_node("cat", concat, &[x, second]).unwrap()[0];
        let bias: &[usize] = &[1, 16, 1, 1];
        let y = wire_pointwise(
            &mut model,
            cat,
            "NIHW,OI->NOHW",
            &[16, 24],
            false,
            Some(bias),
        );
        model.select_output_outlets(&[y]).unwrap();
        model
    }

    #[test]
    fn a_product_of_concatenated_maps_reads_the_parts() {
        if Kernel::best().is_none() {
            skip("a_product_of_concatenated_maps_reads_the_parts");
            return;
        }
        let model = concat_then_pointwise(false);
        let mut direct = model.clone();
        super::super::declutter(&mut direct).unwrap();
        assert_eq!(use_direct_pointwise(&mut direct).unwrap(), 1);
        let order = direct.eval_order().unwrap();
        let ops: Vec<_> = order.iter().map(|&n| direct.node(n).op().name()).collect();
        assert!(!ops.iter().any(|op| op == "Concat"), "{ops:?}");
        let product = order
            .iter()
            .map(|&n| direct.node(n))
            .find(|n| n.op_is::<DirectPointwise>())
            .unwrap();
        assert_eq!(product.inputs.len(), 2, "reads both parts");
        let input = Tensor::from_shape(&[1, 12, 5, 7], &values(420, 3)).unwrap();
        let got = run_optimised(direct, &input).swap_remove(0);
        let want = run_optimised(model, &input).swap_remove(0);
        assert_close(&got, &want, "concatenated maps");
    }

    #[test]
    fn tract_splits_a_product_of_concatenated_tokens() {
        if Kernel::best().is_none() {
            skip("tract_splits_a_product_of_concatenated_tokens");
            return;
        }
        let mut model = concat_then_pointwise(true);
        super::super::declutter(&mut model).unwrap();
        let concat_read_by_einsum = model.nodes().iter().any(|n| {
            n.op_is::<EinSum>()
                && n.inputs
                    .iter()
                    .any(|i| model.node(i.node).op_is::<TypedConcat>())
        });
        assert!(!concat_read_by_einsum, "{model}");
    }
}
