//! `fer_edge::SelectiveScan2D` (contract version 2, docs/model-contract.md):
//! SS2D's cross-scan, selective scan and cross-merge as one op, evaluated by
//! [`kernel::cross_scan`](crate::scan::kernel::cross_scan) (and on a GPU by
//! `scan::cuda`'s `CudaSelectiveScan2D`).

use super::{check_inputs, eval_on_slices, parse_scan, shape_text, ContractError, OP_TYPE_2D};
use crate::scan::kernel::{self, cross_scan};
use tract_hir::internal::*;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;

/// Input names, in contract order, with their ranks.
const INPUTS: [(&str, usize); 7] = [
    ("u", 4),
    ("delta", 5),
    ("A", 2),
    ("Bs", 5),
    ("Cs", 5),
    ("D", 1),
    ("delta_bias", 1),
];

pub(super) fn parse(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    parse_scan(ctx, node, OP_TYPE_2D, 2, |delta_softplus| SelectiveScan2D {
        delta_softplus,
    })
}

/// The typed, optimisable 2-D selective-scan op.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SelectiveScan2D {
    pub delta_softplus: bool,
}

impl SelectiveScan2D {
    /// Checks ranks, types and the agreement of every dimension; returns
    /// `[B, Di, K, N, H, W]`, with a message naming the input on mismatch.
    fn dims<D: DimLike>(&self, shapes: &[&[D]], types: &[DatumType]) -> TractResult<[D; 6]> {
        check_inputs(OP_TYPE_2D, &INPUTS, shapes, types)?;
        let [batch, channels, height, width] = [0, 1, 2, 3].map(|i| shapes[0][i].clone());
        let directions = shapes[1][1].clone();
        let state = shapes[2][1].clone();
        let k_channels = directions.clone() * channels.clone();
        let expect = |input: usize, expected: &[&D]| -> TractResult<()> {
            contract!(
                shapes[input].iter().eq(expected.iter().copied()),
                "{OP_TYPE_2D} input `{}` has shape {}, expected {} (u is [B, Di, H, W] = {}, \
                 delta is [B, K, Di, H, W] = {}, A is [K*Di, N] = {})",
                INPUTS[input].0,
                shape_text(shapes[input]),
                shape_text(expected),
                shape_text(shapes[0]),
                shape_text(shapes[1]),
                shape_text(shapes[2])
            );
            Ok(())
        };
        expect(1, &[&batch, &directions, &channels, &height, &width])?;
        expect(2, &[&k_channels, &state])?;
        expect(3, &[&batch, &directions, &state, &height, &width])?;
        expect(4, &[&batch, &directions, &state, &height, &width])?;
        expect(5, &[&k_channels])?;
        expect(6, &[&k_channels])?;
        if let Ok(k) = directions.to_usize() {
            contract!(
                (1..=cross_scan::MAX_DIRECTIONS).contains(&k),
                "{OP_TYPE_2D}: delta has {k} directions (dim 1); the contract defines 1 to {}",
                cross_scan::MAX_DIRECTIONS
            );
        }
        Ok([batch, channels, directions, state, height, width])
    }
}

impl Op for SelectiveScan2D {
    fn name(&self) -> StaticName {
        OP_TYPE_2D.into()
    }

    op_as_typed_op!();
}

impl EvalOp for SelectiveScan2D {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        eval_on_slices(&inputs, |shapes, types, slices| {
            let [batch, channels, directions, state, height, width] = self.dims(shapes, types)?;
            let grid_inputs = cross_scan::GridInputs {
                u: slices[0],
                delta: slices[1],
                a: slices[2],
                b: slices[3],
                c: slices[4],
                d: slices[5],
                delta_bias: slices[6],
                delta_softplus: self.delta_softplus,
            };
            let dims = cross_scan::GridDims {
                batch,
                channels,
                directions,
                state,
                height,
                width,
            };
            // SAFETY: f32 has no invalid bit patterns, and `selective_scan_2d`
            // zeroes every element of `y` before adding into it.
            let mut y = unsafe { Tensor::uninitialized::<f32>(&[batch, channels, height, width])? };
            cross_scan::selective_scan_2d(
                kernel::best(),
                &dims,
                &grid_inputs,
                y.try_as_plain_ram_mut()?.as_slice_mut()?,
            )?;
            Ok(y)
        })
    }
}

impl TypedOp for SelectiveScan2D {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shapes: Vec<&[TDim]> = inputs.iter().map(|f| &*f.shape).collect();
        let types: Vec<DatumType> = inputs.iter().map(|f| f.datum_type).collect();
        let [batch, channels, _, _, height, width] = self.dims(&shapes, &types)?;
        Ok(tvec!(f32::fact([batch, channels, height, width])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Facts of well-formed inputs for B=1, Di=3, K=8, N=4, H=2, W=5, with
    /// `replace` substituting one input's shape.
    fn facts(replace: Option<(usize, &[usize])>) -> Vec<TypedFact> {
        let mut shapes: Vec<Vec<usize>> = vec![
            vec![1, 3, 2, 5],
            vec![1, 8, 3, 2, 5],
            vec![24, 4],
            vec![1, 8, 4, 2, 5],
            vec![1, 8, 4, 2, 5],
            vec![24],
            vec![24],
        ];
        if let Some((input, shape)) = replace {
            shapes[input] = shape.to_vec();
        }
        shapes.iter().map(f32::fact).collect()
    }

    fn output_facts(facts: &[TypedFact]) -> TractResult<TVec<TypedFact>> {
        let refs: Vec<&TypedFact> = facts.iter().collect();
        SelectiveScan2D {
            delta_softplus: true,
        }
        .output_facts(&refs)
    }

    #[test]
    fn infers_the_shape_of_u() {
        let out = output_facts(&facts(None)).unwrap();
        assert_eq!(out[0], f32::fact([1, 3, 2, 5]));
    }

    #[test]
    fn wrong_shapes_name_the_input() {
        let cases: [(usize, &[usize], &str); 5] = [
            (
                1,
                &[1, 8, 3, 5, 2],
                "input `delta` has shape [1, 8, 3, 5, 2]",
            ),
            (2, &[24], "input `A` has rank 1"),
            (3, &[1, 8, 4, 10], "input `Bs` has rank 4"),
            (4, &[1, 4, 4, 2, 5], "input `Cs` has shape"),
            (6, &[3], "input `delta_bias` has shape [3], expected [24]"),
        ];
        for (input, shape, message) in cases {
            let err = output_facts(&facts(Some((input, shape))))
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{message}: {err}");
        }
    }

    #[test]
    fn more_directions_than_the_contract_defines_are_refused() {
        let f: Vec<TypedFact> = [
            vec![1, 3, 2, 5],
            vec![1, 9, 3, 2, 5],
            vec![27, 4],
            vec![1, 9, 4, 2, 5],
            vec![1, 9, 4, 2, 5],
            vec![27],
            vec![27],
        ]
        .iter()
        .map(f32::fact)
        .collect();
        let err = output_facts(&f).unwrap_err().to_string();
        assert!(err.contains("delta has 9 directions"), "{err}");
    }
}
