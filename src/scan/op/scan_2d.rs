//! `fer_edge::SelectiveScan2D` (contract versions 2 and 3,
//! docs/model-contract.md): SS2D's cross-scan, selective scan and
//! cross-merge as one op, and from version 3 its dt projection too, evaluated
//! by [`kernel::cross_scan`] (and on a GPU
//! by `scan::cuda`'s `CudaSelectiveScan2D`).

use super::{
    check_inputs, eval_on_slices, parse_scan, shape_text, ContractError, InputSpec, ScanOp,
    OP_TYPE_2D,
};
use crate::scan::kernel::cross_scan::{self, GridDims};
use crate::scan::kernel::{self, Delta};
use tract_hir::internal::*;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;

/// Version 2's inputs, in contract order, with their ranks.
const INPUTS: [(&str, usize); 7] = [
    ("u", 4),
    ("delta", 5),
    ("A", 2),
    ("Bs", 5),
    ("Cs", 5),
    ("D", 1),
    ("delta_bias", 1),
];

/// Version 3's: `delta` replaced by the dt projection's input and weight.
const INPUTS_LOW_RANK: [(&str, usize); 8] = [
    ("u", 4),
    ("dt_low", 5),
    ("dt_weight", 2),
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
    parse_scan(ctx, node, OP_TYPE_2D, 2, |version, delta_softplus| {
        SelectiveScan2D {
            delta_softplus,
            low_rank: version >= 3,
        }
    })
}

/// The typed, optimisable 2-D selective-scan op.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SelectiveScan2D {
    pub delta_softplus: bool,
    /// Version 3's form: inputs `dt_low` and `dt_weight` instead of `delta`.
    pub low_rank: bool,
}

impl ScanOp for SelectiveScan2D {
    fn inputs(&self) -> &'static InputSpec {
        if self.low_rank {
            &INPUTS_LOW_RANK
        } else {
            &INPUTS
        }
    }
}

impl SelectiveScan2D {
    /// Checks ranks, types and the agreement of every dimension, with a
    /// message naming the input on mismatch; returns the grid's dims and,
    /// in the low-rank form, R.
    pub(crate) fn dims<D: DimLike>(
        &self,
        shapes: &[&[D]],
        types: &[DatumType],
    ) -> TractResult<(GridDims<D>, Option<D>)> {
        let spec = self.inputs();
        check_inputs(OP_TYPE_2D, spec, shapes, types)?;
        // Past the delta inputs (1 or 2 of them), the inputs are the same.
        let a = spec.len() - 5;
        let [batch, channels, height, width] = [0, 1, 2, 3].map(|i| shapes[0][i].clone());
        let directions = shapes[1][1].clone();
        let state = shapes[a][1].clone();
        let rank = self.low_rank.then(|| shapes[1][2].clone());
        let k_channels = directions.clone() * channels.clone();
        let expect = |input: usize, expected: &[&D]| -> TractResult<()> {
            contract!(
                shapes[input].iter().eq(expected.iter().copied()),
                "{OP_TYPE_2D} input `{}` has shape {}, expected {} (u is [B, Di, H, W] = {}, \
                 {} is [B, K, {}, H, W] = {}, A is [K*Di, N] = {})",
                spec[input].0,
                shape_text(shapes[input]),
                shape_text(expected),
                shape_text(shapes[0]),
                spec[1].0,
                if self.low_rank { "R" } else { "Di" },
                shape_text(shapes[1]),
                shape_text(shapes[a])
            );
            Ok(())
        };
        match &rank {
            Some(rank) => {
                expect(1, &[&batch, &directions, rank, &height, &width])?;
                expect(2, &[&k_channels, rank])?;
                contract!(
                    rank.to_usize().map_or(true, |r| r > 0),
                    "{OP_TYPE_2D}: dt_low has rank 0 (dim 2); the dt projection needs 1 or more"
                );
            }
            None => expect(1, &[&batch, &directions, &channels, &height, &width])?,
        }
        expect(a, &[&k_channels, &state])?;
        expect(a + 1, &[&batch, &directions, &state, &height, &width])?;
        expect(a + 2, &[&batch, &directions, &state, &height, &width])?;
        expect(a + 3, &[&k_channels])?;
        expect(a + 4, &[&k_channels])?;
        if let Ok(k) = directions.to_usize() {
            contract!(
                (1..=cross_scan::MAX_DIRECTIONS).contains(&k),
                "{OP_TYPE_2D}: {} has {k} directions (dim 1); the contract defines 1 to {}",
                spec[1].0,
                cross_scan::MAX_DIRECTIONS
            );
        }
        let dims = GridDims {
            batch,
            channels,
            directions,
            state,
            height,
            width,
        };
        Ok((dims, rank))
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
            let (dims, rank) = self.dims(shapes, types)?;
            let (delta, rest) = match rank {
                Some(rank) => {
                    let (low, weight) = (slices[1], slices[2]);
                    (Delta::LowRank { weight, low, rank }, &slices[3..])
                }
                None => (Delta::Rows(slices[1]), &slices[2..]),
            };
            let grid_inputs = cross_scan::GridInputs {
                u: slices[0],
                delta,
                a: rest[0],
                b: rest[1],
                c: rest[2],
                d: rest[3],
                delta_bias: rest[4],
                delta_softplus: self.delta_softplus,
            };
            // SAFETY: f32 has no invalid bit patterns, and `selective_scan_2d`
            // zeroes every element of `y` before adding into it.
            let mut y = unsafe {
                Tensor::uninitialized::<f32>(&[dims.batch, dims.channels, dims.height, dims.width])?
            };
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
        let (dims, _) = self.dims(&shapes, &types)?;
        Ok(tvec!(f32::fact([
            dims.batch,
            dims.channels,
            dims.height,
            dims.width
        ])))
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

    /// The same in version 3's form, R = 2: `dt_low` and `dt_weight` in
    /// place of delta.
    fn low_rank_facts(replace: Option<(usize, &[usize])>) -> Vec<TypedFact> {
        let mut f = facts(None);
        f.splice(1..2, [f32::fact([1, 8, 2, 2, 5]), f32::fact([24, 2])]);
        if let Some((input, shape)) = replace {
            f[input] = f32::fact(shape);
        }
        f
    }

    fn output_facts(facts: &[TypedFact]) -> TractResult<TVec<TypedFact>> {
        let refs: Vec<&TypedFact> = facts.iter().collect();
        SelectiveScan2D {
            delta_softplus: true,
            low_rank: refs.len() == INPUTS_LOW_RANK.len(),
        }
        .output_facts(&refs)
    }

    #[test]
    fn infers_the_shape_of_u() {
        for f in [facts(None), low_rank_facts(None)] {
            let out = output_facts(&f).unwrap();
            assert_eq!(out[0], f32::fact([1, 3, 2, 5]));
        }
    }

    #[test]
    fn low_rank_shapes_name_the_input() {
        let cases: [(usize, &[usize], &str); 5] = [
            (
                2,
                &[24, 3],
                "input `dt_weight` has shape [24, 3], expected [24, 2]",
            ),
            (
                1,
                &[1, 8, 2, 5, 2],
                "input `dt_low` has shape [1, 8, 2, 5, 2]",
            ),
            (1, &[1, 8, 0, 2, 5], "dt_low has rank 0"),
            (4, &[1, 8, 4, 5, 2], "input `Bs` has shape"),
            (7, &[3], "input `delta_bias` has shape [3], expected [24]"),
        ];
        for (input, shape, message) in cases {
            let mut f = low_rank_facts(Some((input, shape)));
            if shape.starts_with(&[1, 8, 0]) {
                f[2] = f32::fact([24, 0]);
            }
            let err = output_facts(&f).unwrap_err().to_string();
            assert!(err.contains(message), "{message}: {err}");
        }
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
