//! What the direct kernels' unit tests share: their inputs, the pointwise
//! models they build, how they run a model through tract, how they compare
//! outputs and how they say they did not run.

use super::Kernel;
use tract_core::ops::einsum::EinSum;
use tract_hir::internal::*;

/// Says on the real stderr, past the harness's capture, that `test` did not
/// run.
pub fn skip(test: &str) {
    use std::io::Write;
    let why = "no direct convolution kernel for this CPU";
    let _ = writeln!(std::io::stderr(), "\n**** SKIPPED {test}: {why} ****\n");
}

/// Every direct kernel this CPU runs; none (said loudly) is a skipped
/// `test`.
pub fn kernels(test: &str) -> Vec<Kernel> {
    let kernels: Vec<_> = Kernel::available().collect();
    if kernels.is_empty() {
        skip(test);
    }
    kernels
}

/// Values in [-1, 1) from a fixed sequence.
pub fn values(count: usize, seed: u32) -> Vec<f32> {
    let mut state = seed;
    (0..count)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1 << 23) as f32 - 1.0
        })
        .collect()
}

/// Every output of `model` on `input`, optimised by tract (with the CPU
/// kernels fer-edge selects, before tract's first look at the CPU fixes
/// them for the whole test process).
pub fn run_optimised(model: TypedModel, input: &Tensor) -> Vec<Vec<f32>> {
    crate::device::avoid_faulty_cpu_kernels();
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let outputs = plan.run(tvec!(input.clone().into_tvalue())).unwrap();
    outputs
        .iter()
        .map(|output| {
            let output = output.try_as_plain_ram().unwrap();
            output.as_slice::<f32>().unwrap().to_vec()
        })
        .collect()
}

/// A model of one pointwise `EinSum` (`formula`) of a source shaped `input`
/// and constant weights shaped `weights` (the first operand when
/// `weights_first`), then a constant `Add` shaped `bias` if given: the model,
/// with no output selected yet, and the last node's output.
pub fn pointwise_model(
    formula: &str,
    input: &[usize],
    weights: &[usize],
    weights_first: bool,
    bias: Option<&[usize]>,
) -> (TypedModel, OutletId) {
    let mut model = TypedModel::default();
    let x = model.add_source("x", f32::fact(input)).unwrap();
    let out = wire_pointwise(&mut model, x, formula, weights, weights_first, bias);
    (model, out)
}

/// Wires into `model` the pointwise `EinSum` (`formula`) of `x` and
/// constant weights shaped `weights` (the first operand when
/// `weights_first`), then a constant `Add` shaped `bias` if given; returns
/// the last node's output.
pub fn wire_pointwise(
    model: &mut TypedModel,
    x: OutletId,
    formula: &str,
    weights: &[usize],
    weights_first: bool,
    bias: Option<&[usize]>,
) -> OutletId {
    let constant = |shape: &[usize], seed| {
        let count = shape.iter().product();
        Tensor::from_shape(shape, &values(count, seed)).unwrap()
    };
    let w = model.add_const("w", constant(weights, 7)).unwrap();
    let inputs = if weights_first { [w, x] } else { [x, w] };
    let axes: AxesMapping = formula.parse().unwrap();
    let op = EinSum::new(axes, f32::datum_type());
    let mut out = model.wire_node("einsum", op, &inputs).unwrap()[0];
    if let Some(shape) = bias {
        let b = model.add_const("b", constant(shape, 9)).unwrap();
        let add = tract_core::ops::math::add();
        out = model.wire_node("bias", add, &[out, b]).unwrap()[0];
    }
    out
}

/// Asserts that `got` is `want` within what a different summation order
/// may change (1e-5, relative above 1).
pub fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what} [{i}]: {g} against {w}"
        );
    }
}
