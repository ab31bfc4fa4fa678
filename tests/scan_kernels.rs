//! The selective-scan kernels through the public API: every kernel against
//! the reference, the reference against an f64 loop, thread-count
//! independence, and input validation.
//!
//! Accuracy is judged against the magnitude of the terms each output sums,
//! not against the output itself: y = sum_n C h + D u, and each h is a
//! running sum of dt Bs u terms. Both sums can cancel to about 0 with random
//! signs, while a kernel's rounding error is proportional to the terms, so
//! the scale of output (c, t) is the same scan with every term made positive:
//!
//! ```text
//! H[n,t]   = exp(dt A[n]) H[n,t-1] + |dt Bs[n,t] u[t]|
//! scale[t] = sum_n |Cs[n,t]| H[n,t] + |D u[t]|
//! ```
//!
//! and a kernel passes if |y - y_want| <= TOLERANCE * scale + 1e-30 (the
//! 1e-30 absorbs subnormal results that SIMD kernels flush to zero).
//! Each step's f32 rounding adds a few times 6e-8 of that scale, and the
//! vector exp and softplus at most 1.1e-7 and 3e-7 relative error (dt's error
//! reaches exp(dt A) multiplied by |dt A|, but then the decayed term is
//! smaller by exp(-|dt A|), and |x| exp(-|x|) < 1). Errors from earlier steps
//! decay with h itself, so over these tests' sequences (at most 150 steps,
//! most of them with short memory) 1e-5 leaves a wide margin: the worst
//! case measured is 3% of the allowance (each case prints its own with
//! `--nocapture`).

use fer_edge::scan::kernel::{
    available, reference, selective_scan, ScanDims, ScanError, ScanInputs,
};
use tract_linalg::multithread::{multithread_tract_scope, Executor};

#[path = "common/scan_problem.rs"]
mod scan_problem;
use scan_problem::{dims, Problem, Ranges, SLOW, STIFF, TYPICAL};

/// Accuracy bound relative to the scale of the summed terms (see the top).
const TOLERANCE: f64 = 1e-5;

/// The f64 oracle, beside the shared problem type.
impl Problem {
    /// y computed naively in f64, and the scale of each output (see the top).
    fn scan_f64(&self) -> (Vec<f64>, Vec<f64>) {
        let ScanDims {
            batch,
            channels,
            groups,
            state,
            len,
        } = self.dims;
        let channels_per_group = channels / groups;
        let (mut y, mut scale) = (vec![0.0; self.output_len()], vec![0.0; self.output_len()]);
        for b in 0..batch {
            for c in 0..channels {
                let group_row = (b * groups + c / channels_per_group) * state;
                let (mut h, mut h_abs) = (vec![0.0f64; state], vec![0.0f64; state]);
                for t in 0..len {
                    let at = (b * channels + c) * len + t;
                    let raw_dt = f64::from(self.delta[at]) + f64::from(self.delta_bias[c]);
                    let dt = if self.delta_softplus {
                        raw_dt.exp().ln_1p()
                    } else {
                        raw_dt
                    };
                    let u = f64::from(self.u[at]);
                    let skip = f64::from(self.d[c]) * u;
                    let (mut sum, mut sum_abs) = (skip, skip.abs());
                    for n in 0..state {
                        let bc = (group_row + n) * len + t;
                        let decay = (dt * f64::from(self.a[c * state + n])).exp();
                        let input = dt * f64::from(self.b[bc]) * u;
                        h[n] = decay * h[n] + input;
                        h_abs[n] = decay * h_abs[n] + input.abs();
                        sum += f64::from(self.c[bc]) * h[n];
                        sum_abs += f64::from(self.c[bc]).abs() * h_abs[n];
                    }
                    (y[at], scale[at]) = (sum, sum_abs);
                }
            }
        }
        (y, scale)
    }
}

/// Asserts |got - want| <= TOLERANCE * scale + 1e-30 everywhere and returns
/// the worst |got - want| / (TOLERANCE * scale + 1e-30).
fn assert_close(label: &str, got: &[f32], want: &[f64], scale: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mut worst: f64 = 0.0;
    for (i, ((&got, &want), &scale)) in got.iter().zip(want).zip(scale).enumerate() {
        let allowed = TOLERANCE * scale + 1e-30;
        let error = (f64::from(got) - want).abs();
        assert!(
            error <= allowed,
            "{label}: y[{i}] = {got}, want {want} (error {error:e}, allowed {allowed:e})"
        );
        worst = worst.max(error / allowed);
    }
    worst
}

/// The accuracy cases: (dims, delta_softplus, ranges).
fn cases() -> Vec<(ScanDims, bool, Ranges)> {
    vec![
        (dims(1, 16, 2, 16, 1), true, TYPICAL),        // one step
        (dims(1, 16, 2, 16, 7), true, TYPICAL),        // fewer steps than a vector
        (dims(1, 2 * 13, 2, 16, 40), true, TYPICAL),   // 13 channels per group: tail lanes
        (dims(2, 8 * 3, 8, 16, 24), true, TYPICAL),    // two batches, 8 groups of 3
        (dims(1, 24, 1, 1, 30), true, TYPICAL),        // N = 1
        (dims(2, 20, 2, 5, 30), false, TYPICAL),       // N = 5, no softplus
        (dims(1, 2 * 11, 2, 17, 30), true, TYPICAL),   // N = 17
        (dims(1, 16, 1, 16, 50), true, STIFF),         // decays underflowing to 0
        (dims(1, 16, 1, 16, 50), false, STIFF),        // same, dt up to 30.5
        (dims(1, 16, 2, 16, 150), true, SLOW),         // long memory, several time chunks
        (dims(1, 70, 1, 16, 65), true, TYPICAL),       // G = 1, two tasks
        (dims(2, 2 * 136, 2, 16, 20), false, TYPICAL), // many tasks per group
    ]
}

#[test]
fn every_kernel_matches_the_reference() {
    for (seed, (dims, delta_softplus, ranges)) in cases().into_iter().enumerate() {
        let problem = Problem::random(dims, delta_softplus, ranges, seed as u64);
        let want: Vec<f64> = problem
            .run(reference())
            .into_iter()
            .map(f64::from)
            .collect();
        let (_, scale) = problem.scan_f64();
        for kernel in available() {
            let label = format!(
                "{} on {dims:?} softplus={delta_softplus} {ranges:?}",
                kernel.name()
            );
            let worst = assert_close(&label, &problem.run(kernel), &want, &scale);
            println!("{label}: worst error {worst:.3} of allowed");
        }
    }
}

#[test]
fn simd_kernels_agree_bit_for_bit() {
    // Each runs the same IEEE operations per lane, whatever its vector width.
    let simd = &available()[1..];
    if simd.len() < 2 {
        eprintln!(
            "SKIPPED simd_kernels_agree_bit_for_bit: this CPU has {} SIMD kernel(s), none to compare",
            simd.len()
        );
        return;
    }
    for (seed, (dims, delta_softplus, ranges)) in cases().into_iter().enumerate() {
        let problem = Problem::random(dims, delta_softplus, ranges, seed as u64);
        let first = bits(&problem.run(simd[0]));
        for kernel in &simd[1..] {
            assert!(
                bits(&problem.run(*kernel)) == first,
                "{} and {} differ on {dims:?} softplus={delta_softplus} {ranges:?}",
                simd[0].name(),
                kernel.name()
            );
        }
    }
}

#[test]
fn reference_matches_f64() {
    for (seed, (dims, delta_softplus, ranges)) in cases().into_iter().enumerate() {
        let problem = Problem::random(dims, delta_softplus, ranges, seed as u64);
        let (want, scale) = problem.scan_f64();
        let label = format!("reference on {dims:?} softplus={delta_softplus} {ranges:?}");
        let worst = assert_close(&label, &problem.run(reference()), &want, &scale);
        println!("{label}: worst error {worst:.3} of allowed");
    }
}

#[test]
fn available_kernels_include_the_reference_and_best() {
    let names: Vec<&str> = available().iter().map(|kernel| kernel.name()).collect();
    assert_eq!(names[0], "reference");
    assert!(
        names.contains(&fer_edge::scan::kernel::best().name()),
        "{names:?}"
    );
    if cfg!(target_arch = "aarch64") {
        assert_eq!(names, ["reference", "neon"]);
    }
}

#[test]
fn thread_count_does_not_change_results() {
    // 200 channels per (batch, group): 4 tasks each, 16 in all.
    let problem = Problem::random(dims(2, 2 * 200, 2, 16, 70), true, TYPICAL, 99);
    for kernel in available() {
        let single = multithread_tract_scope(Executor::SingleThread, || problem.run(kernel));
        let pooled = multithread_tract_scope(Executor::multithread(2), || problem.run(kernel));
        assert!(single.iter().all(|y| y.is_finite()), "{}", kernel.name());
        assert_eq!(
            bits(&single),
            bits(&pooled),
            "{} differs across threads",
            kernel.name()
        );
    }
}

#[test]
fn wrong_lengths_name_the_tensor() {
    let problem = Problem::random(dims(2, 4, 2, 3, 5), true, TYPICAL, 7);
    let inputs = problem.inputs();
    let mut y = vec![0.0; problem.output_len()];
    // (name, shape, expected length, inputs with that tensor one element short)
    let short: [(&str, &str, usize, ScanInputs); 7] = [
        (
            "u",
            "B*KD*L",
            40,
            ScanInputs {
                u: &problem.u[1..],
                ..inputs
            },
        ),
        (
            "delta",
            "B*KD*L",
            40,
            ScanInputs {
                delta: &problem.delta[1..],
                ..inputs
            },
        ),
        (
            "A",
            "KD*N",
            12,
            ScanInputs {
                a: &problem.a[1..],
                ..inputs
            },
        ),
        (
            "Bs",
            "B*G*N*L",
            60,
            ScanInputs {
                b: &problem.b[1..],
                ..inputs
            },
        ),
        (
            "Cs",
            "B*G*N*L",
            60,
            ScanInputs {
                c: &problem.c[1..],
                ..inputs
            },
        ),
        (
            "D",
            "KD",
            4,
            ScanInputs {
                d: &problem.d[1..],
                ..inputs
            },
        ),
        (
            "delta_bias",
            "KD",
            4,
            ScanInputs {
                delta_bias: &problem.delta_bias[1..],
                ..inputs
            },
        ),
    ];
    for kernel in available() {
        for (name, shape, expected, inputs) in &short {
            let error = selective_scan(kernel, &problem.dims, inputs, &mut y).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "input `{name}` has {} elements, expected {shape} = {expected}",
                    expected - 1
                )
            );
        }
        let error = selective_scan(kernel, &problem.dims, &inputs, &mut y[1..]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "output `y` has 39 elements, expected B*KD*L = 40"
        );
    }
}

#[test]
fn groups_must_divide_channels() {
    for groups in [0, 3] {
        let problem = Problem::random(dims(1, 4, 1, 2, 3), true, TYPICAL, 8);
        let bad = ScanDims {
            groups,
            ..problem.dims
        };
        let mut y = vec![0.0; problem.output_len()];
        let error = selective_scan(reference(), &bad, &problem.inputs(), &mut y).unwrap_err();
        assert_eq!(
            error,
            ScanError::ChannelsNotDivisibleByGroups {
                channels: 4,
                groups
            }
        );
        let message = format!("4 channels (KD) cannot be split evenly into {groups} groups (G)");
        assert_eq!(error.to_string(), message);
    }
}

#[test]
fn oversized_dims_are_an_error() {
    let problem = Problem::random(dims(1, 1, 1, 1, 1), true, TYPICAL, 9);
    let huge = dims(usize::MAX / 2 + 1, 2, 1, 1, 1);
    let error = selective_scan(reference(), &huge, &problem.inputs(), &mut []).unwrap_err();
    assert_eq!(
        error.to_string(),
        "`u` would have B*KD*L elements, which overflows usize"
    );
}

#[test]
fn empty_dims_give_empty_or_skip_only_output() {
    for kernel in available() {
        for empty in [
            dims(0, 8, 2, 16, 5),
            dims(1, 0, 0, 16, 5),
            dims(1, 0, 4, 3, 5),
            dims(2, 8, 2, 4, 0),
        ] {
            let problem = Problem::random(empty, true, TYPICAL, 10);
            assert_eq!(problem.output_len(), 0);
            selective_scan(kernel, &empty, &problem.inputs(), &mut []).expect("empty is valid");
        }
        // No states: y is the skip connection D u alone.
        let problem = Problem::random(dims(2, 10, 2, 0, 9), true, TYPICAL, 11);
        let y = problem.run(kernel);
        for (i, &y) in y.iter().enumerate() {
            let channel = i / 9 % 10;
            assert_eq!(
                y,
                problem.d[channel] * problem.u[i],
                "{} y[{i}]",
                kernel.name()
            );
        }
    }
}

/// The bit patterns of `y`, for exact comparisons that NaN does not defeat.
fn bits(y: &[f32]) -> Vec<u32> {
    y.iter().map(|v| v.to_bits()).collect()
}
