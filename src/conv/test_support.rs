//! What the direct kernels' unit tests share: their inputs and how they say
//! they did not run.

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
