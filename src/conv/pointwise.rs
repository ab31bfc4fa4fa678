//! Pointwise (1x1) convolutions and the matrix products that are the same
//! thing (the SS2D blocks' projections): `out[m][p] = bias[m] + sum_k
//! weights[m][k] in[k][p]` over the pixels p of an image whose channels come
//! first (`[K, P]`, as the convolutions and `x_proj` have them) or last
//! (`[P, K]`, the token-major `in_proj` and `out_proj`; also into a
//! channel-first output, where a product's result is permuted into a
//! feature map), computed by the
//! direct [`Kernel`] instead of tract's packing and matrix product, the
//! following bias `Add` folded in.

use super::kernel::{self, Activation, Channels, Kernel, PointwiseLayer};
use std::sync::Arc;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::math::Add;
use tract_hir::internal::*;

/// A pointwise convolution of an f32 input (`[K, P...]` or `[P..., K]`, with
/// any size-1 axes around) into `[M, P...]` (from either) or `[P..., M]`
/// (from `[P..., K]`), with a bias: a decluttered
/// `EinSum` with constant weights (and the `Add` of a constant bias after
/// it), computed by the direct [`Kernel`].
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
    /// its activations and the node whose output it replaces (the bias `Add`
    /// after it, if there is one to fold in), if it is one this module
    /// handles: f32, two inputs, constant `[M, K]` or `[K, M]` weights, one
    /// contracted axis, up to size-1 axes the activations `[K, pixels]` and
    /// the output `[M, pixels]`, or the activations channels-last and the
    /// output either way, M a whole number of the kernel's blocks, and at
    /// least a tile of pixels ([`Channels::min_pixels`]).
    fn for_node(
        model: &TypedModel,
        node: &TypedNode,
    ) -> TractResult<Option<(Self, OutletId, usize)>> {
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
            node.inputs[a],
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
        let input = patch.tap_model(model, activations)?;
        let output = patch.wire_node(&node.name, op, &[input])?;
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
        let input = args_1!(inputs);
        let pixels = input.len() / self.input_channels;
        ensure!(
            pixels * self.input_channels == input.len()
                && pixels * self.output_channels == self.output_shape.iter().product::<usize>(),
            "DirectPointwise: input shape {:?} does not hold {} channels of the output's pixels",
            input.shape(),
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
            input.try_as_plain_ram()?.as_slice::<f32>()?,
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
    use crate::conv::test_support::{assert_close, pointwise_model, run_optimised, skip, values};

    #[test]
    fn kernels_compute_the_products() {
        let Some(kernel) = Kernel::best() else {
            skip("kernels_compute_the_products");
            return;
        };
        // Pixel counts around the kernels' registers and tiles.
        let cases = [
            (Channels::First, 128, 288, 784),
            (Channels::First, 3, 8, 1),
            (Channels::First, 5, 16, 49),
            (Channels::First, 64, 8, 33),
            (Channels::First, 1, 24, 32),
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
            kernel.run_pointwise(&layer, &input, (k, p), &mut output);
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
                    "{channels:?} {k} -> {m} over {p} pixels: element {i} is {got}, \
                     expected {want}"
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
}
