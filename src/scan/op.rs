//! fer-edge's ONNX ops for tract: parsing, shape checks and evaluation
//! through the fastest [`kernel`] for this CPU.
//!
//! Contract version 1 (MODEL.md): `fer_edge::SelectiveScan`, inputs u, delta,
//! A, Bs, Cs, D, delta_bias; output y with the shape of u; integer attribute
//! `delta_softplus` (default 1). Version 2 (docs/model-contract.md) adds
//! [`SelectiveScan2D`], the scan that walks SS2D's directions itself; a
//! version 2 model may use both ops. Version 3 moves SS2D's dt projection
//! into `SelectiveScan2D` (inputs `dt_low` and `dt_weight` for `delta`).

use super::kernel::{self, ScanDims, ScanInputs};
use tract_hir::internal::*;
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;

/// ONNX domain of fer-edge's custom ops.
pub const DOMAIN: &str = "fer_edge";
/// ONNX op type of the selective scan.
pub const OP_TYPE: &str = "SelectiveScan";
/// ONNX op type of the 2-D selective scan (contract version 2).
pub const OP_TYPE_2D: &str = "SelectiveScan2D";
/// The newest version of the op contract this runtime implements; it loads
/// every version from 1 up.
pub const VERSION: i64 = 3;

/// A model that breaks the op's contract (MODEL.md): a wrong domain or
/// version, inputs, attributes or shapes. [`crate::infer`] reports it alone,
/// without tract's context around it (which would dump every fact of the
/// node), and not as a file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ContractError(pub String);

/// `ensure!` with a [`ContractError`].
macro_rules! contract {
    ($condition:expr, $($message:tt)+) => {
        if !$condition {
            return Err(ContractError(format!($($message)+)).into());
        }
    };
}

mod scan_2d;
pub use scan_2d::SelectiveScan2D;

/// Input names, in contract order, with their ranks.
type InputSpec = [(&'static str, usize)];

/// `SelectiveScan`'s inputs.
const INPUTS: [(&str, usize); 7] = [
    ("u", 3),
    ("delta", 3),
    ("A", 2),
    ("Bs", 4),
    ("Cs", 4),
    ("D", 1),
    ("delta_bias", 1),
];

/// Registers fer-edge's ops into an ONNX front end.
pub fn register(onnx: &mut tract_onnx::Onnx) {
    register_into(&mut onnx.op_register);
}

fn register_into(register: &mut OnnxOpRegister) {
    register.insert(OP_TYPE, parse);
    register.insert(OP_TYPE_2D, scan_2d::parse);
}

/// tract's register is keyed by op name only, so the domain is checked here,
/// and the contract version the model imports must be one this runtime
/// knows and at least `since`, the version that introduced `op_type`.
/// Returns that version.
fn check_domain_and_version(
    ctx: &ParsingContext,
    node: &NodeProto,
    op_type: &str,
    since: i64,
) -> TractResult<i64> {
    contract!(
        node.domain == DOMAIN,
        "node `{}` is a `{op_type}` of domain `{}`; fer-edge implements `{op_type}` only in domain `{DOMAIN}`",
        node.name,
        node.domain
    );
    let version = ctx
        .model
        .opset_import
        .iter()
        .find(|o| o.domain == DOMAIN)
        .map(|o| o.version);
    contract!(
        version.is_some_and(|v| (1..=VERSION).contains(&v)),
        "node `{}`: the model's `{DOMAIN}` ops are {}, and this fer-edge implements versions \
         1 to {VERSION} of their contract; export the model for version {VERSION}, or update \
         fer-edge",
        node.name,
        version.map_or("of no imported version".into(), |v| format!("version {v}"))
    );
    let version = version.unwrap_or_default();
    contract!(
        version >= since,
        "node `{}`: `{op_type}` is an op of contract version {since}, but the model imports \
         `{DOMAIN}` version {version}",
        node.name
    );
    Ok(version)
}

/// The `delta_softplus` attribute: 0 or 1, default 1.
fn delta_softplus(node: &NodeProto) -> TractResult<bool> {
    match node.get_attr_opt::<i64>("delta_softplus")?.unwrap_or(1) {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(ContractError(format!(
            "node `{}`: attribute delta_softplus must be 0 or 1, got {other}",
            node.name
        ))
        .into()),
    }
}

fn parse(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    parse_scan(ctx, node, OP_TYPE, 1, |_, delta_softplus| SelectiveScan {
        delta_softplus,
    })
}

/// A scan op as the parser sees it: its inputs depend on the form it was
/// built in.
trait ScanOp: TypedOp + Clone {
    /// Its inputs, in contract order, with their ranks (`u` first).
    fn inputs(&self) -> &'static InputSpec;
}

/// Parses a scan node of `op_type` (an op of contract version `since`, with
/// the attribute `delta_softplus`) into the op `make` builds for the
/// model's contract version, and checks the node has that op's inputs.
fn parse_scan<T: ScanOp>(
    ctx: &ParsingContext,
    node: &NodeProto,
    op_type: &str,
    since: i64,
    make: fn(i64, bool) -> T,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let version = check_domain_and_version(ctx, node, op_type, since)?;
    let op = make(version, delta_softplus(node)?);
    let inputs = op.inputs();
    contract!(
        node.input.len() == inputs.len() && node.output.len() == 1,
        "node `{}`: `{op_type}` of contract version {version} takes {} inputs ({}) and 1 \
         output, got {} and {}",
        node.name,
        inputs.len(),
        inputs
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(", "),
        node.input.len(),
        node.output.len()
    );
    Ok((expand(ScanExpansion(op)), vec![]))
}

/// Parse-time form of a scan op: infers the output fact (f32, the shape of
/// `u`), then wires the typed op.
#[derive(Debug, Clone)]
struct ScanExpansion<T>(T);

impl<T: ScanOp> Expansion for ScanExpansion<T> {
    fn name(&self) -> StaticName {
        self.0.name()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.0.inputs().len())?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// Checks that a scan op of `op_type` has the inputs of `spec` (name and
/// rank, in order), all f32.
fn check_inputs<D: DimLike>(
    op_type: &str,
    spec: &[(&str, usize)],
    shapes: &[&[D]],
    types: &[DatumType],
) -> TractResult<()> {
    contract!(
        shapes.len() == spec.len(),
        "{op_type} takes {} inputs, got {}",
        spec.len(),
        shapes.len()
    );
    for ((name, rank), (shape, dt)) in spec.iter().zip(shapes.iter().zip(types)) {
        contract!(
            *dt == f32::datum_type(),
            "{op_type} input `{name}` is {dt:?}, expected f32"
        );
        contract!(
            shape.len() == *rank,
            "{op_type} input `{name}` has rank {} (shape {}), expected rank {rank}",
            shape.len(),
            shape_text(shape)
        );
    }
    Ok(())
}

/// Inputs of a scan op that [`eval_on_slices`] keeps on the stack (7 or 8);
/// more would spill to the heap, not fail.
const INLINE_INPUTS: usize = 8;

/// The shapes and types of a scan's input values, then `run` on their data
/// as f32 slices.
fn eval_on_slices(
    inputs: &[TValue],
    run: impl FnOnce(&[&[usize]], &[DatumType], &[&[f32]]) -> TractResult<Tensor>,
) -> TractResult<TVec<TValue>> {
    type Inline<T> = tract_smallvec::SmallVec<[T; INLINE_INPUTS]>;
    let shapes: Inline<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
    let types: Inline<DatumType> = inputs.iter().map(|t| t.datum_type()).collect();
    let plain = inputs
        .iter()
        .map(|t| t.try_as_plain_ram())
        .collect::<TractResult<Inline<_>>>()?;
    let slices = plain
        .iter()
        .map(|p| p.as_slice::<f32>())
        .collect::<TractResult<Inline<_>>>()?;
    Ok(tvec!(run(&shapes, &types, &slices)?.into_tvalue()))
}

/// The typed, optimisable selective-scan op.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SelectiveScan {
    pub delta_softplus: bool,
}

impl SelectiveScan {
    /// Checks ranks, types and the agreement of every dimension; returns the
    /// dimensions, with a message naming the input on mismatch.
    fn dims<D: DimLike>(&self, shapes: &[&[D]], types: &[DatumType]) -> TractResult<[D; 5]> {
        check_inputs(OP_TYPE, &INPUTS, shapes, types)?;
        let [batch, channels, len] = [&shapes[0][0], &shapes[0][1], &shapes[0][2]].map(D::clone);
        let [groups, state] = [&shapes[3][1], &shapes[3][2]].map(D::clone);
        let expect = |input: usize, expected: &[&D]| -> TractResult<()> {
            contract!(
                shapes[input].iter().eq(expected.iter().copied()),
                "{OP_TYPE} input `{}` has shape {}, expected {} (u is [B, KD, L] = {}, Bs is \
                 [B, G, N, L] = {})",
                INPUTS[input].0,
                shape_text(shapes[input]),
                shape_text(expected),
                shape_text(shapes[0]),
                shape_text(shapes[3])
            );
            Ok(())
        };
        expect(1, &[&batch, &channels, &len])?;
        expect(2, &[&channels, &state])?;
        expect(3, &[&batch, &groups, &state, &len])?;
        expect(4, &[&batch, &groups, &state, &len])?;
        expect(5, &[&channels])?;
        expect(6, &[&channels])?;
        if let (Ok(c), Ok(g)) = (channels.to_usize(), groups.to_usize()) {
            contract!(
                g > 0 && c % g == 0,
                "{OP_TYPE}: {c} channels (u dim 1) cannot be split into {g} groups (Bs dim 1)"
            );
        }
        Ok([batch, channels, groups, state, len])
    }
}

/// `[256, 16]`, or `[B, 256]` with symbols.
pub(crate) fn shape_text<D: std::fmt::Display>(shape: &[D]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

impl ScanOp for SelectiveScan {
    fn inputs(&self) -> &'static InputSpec {
        &INPUTS
    }
}

impl Op for SelectiveScan {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    op_as_typed_op!();
}

impl EvalOp for SelectiveScan {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        eval_on_slices(&inputs, |shapes, types, slices| {
            let [batch, channels, groups, state, len] = self.dims(shapes, types)?;
            let scan_inputs = ScanInputs {
                u: slices[0],
                delta: slices[1],
                a: slices[2],
                b: slices[3],
                c: slices[4],
                d: slices[5],
                delta_bias: slices[6],
                delta_softplus: self.delta_softplus,
            };
            let dims = ScanDims {
                batch,
                channels,
                groups,
                state,
                len,
            };
            // SAFETY: f32 has no invalid bit patterns, and `selective_scan`
            // writes every element of `y`.
            let mut y = unsafe { Tensor::uninitialized::<f32>(&[batch, channels, len])? };
            kernel::selective_scan(
                kernel::best(),
                &dims,
                &scan_inputs,
                y.try_as_plain_ram_mut()?.as_slice_mut()?,
            )?;
            Ok(y)
        })
    }
}

impl TypedOp for SelectiveScan {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shapes: Vec<&[TDim]> = inputs.iter().map(|f| &*f.shape).collect();
        let types: Vec<DatumType> = inputs.iter().map(|f| f.datum_type).collect();
        let [batch, channels, _, _, len] = self.dims(&shapes, &types)?;
        Ok(tvec!(f32::fact([batch, channels, len])))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Facts of well-formed inputs for B=1, KD=8, G=2, N=4, L=5, with
    /// `replace` substituting one input's shape.
    fn facts(replace: Option<(usize, &[usize])>) -> Vec<TypedFact> {
        let mut shapes: Vec<Vec<usize>> = vec![
            vec![1, 8, 5],
            vec![1, 8, 5],
            vec![8, 4],
            vec![1, 2, 4, 5],
            vec![1, 2, 4, 5],
            vec![8],
            vec![8],
        ];
        if let Some((input, shape)) = replace {
            shapes[input] = shape.to_vec();
        }
        shapes.iter().map(f32::fact).collect()
    }

    fn output_facts(facts: &[TypedFact]) -> TractResult<TVec<TypedFact>> {
        let refs: Vec<&TypedFact> = facts.iter().collect();
        SelectiveScan {
            delta_softplus: true,
        }
        .output_facts(&refs)
    }

    #[test]
    fn infers_the_shape_of_u() {
        let out = output_facts(&facts(None)).unwrap();
        assert_eq!(out[0], f32::fact([1, 8, 5]));
    }

    #[test]
    fn wrong_shapes_name_the_input() {
        let cases: [(usize, &[usize], &str); 5] = [
            (1, &[1, 8, 6], "input `delta` has shape"),
            (2, &[8], "input `A` has rank 1"),
            (4, &[1, 2, 3, 5], "input `Cs` has shape"),
            (6, &[7], "input `delta_bias` has shape"),
            (3, &[1, 3, 4, 5], "input `Cs` has shape"),
        ];
        for (input, shape, message) in cases {
            let err = output_facts(&facts(Some((input, shape))))
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{message}: {err}");
        }
    }

    #[test]
    fn channels_must_split_into_groups() {
        let mut f = facts(Some((3, &[1, 3, 4, 5])));
        f[4] = f32::fact([1, 3, 4, 5]);
        let err = output_facts(&f).unwrap_err().to_string();
        assert!(
            err.contains("8 channels (u dim 1) cannot be split into 3 groups"),
            "{err}"
        );
    }

    #[test]
    fn non_f32_inputs_are_rejected() {
        let mut f = facts(None);
        f[0] = f64::fact([1, 8, 5]);
        let err = output_facts(&f).unwrap_err().to_string();
        assert!(err.contains("input `u` is F64, expected f32"), "{err}");
    }
}
