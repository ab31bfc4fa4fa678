//! What the direct kernels' unit tests share: their inputs, how they run a
//! model through tract and how they say they did not run.

use tract_hir::internal::*;

/// Says on the real stderr, past the harness's capture, that `test` did not
/// run.
pub fn skip(test: &str) {
    use std::io::Write;
    let why = "no direct convolution kernel for this CPU";
    let _ = writeln!(std::io::stderr(), "\n**** SKIPPED {test}: {why} ****\n");
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
