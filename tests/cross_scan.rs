//! The 2-D selective scan (`SelectiveScan2D`, docs/model-contract.md)
//! through the public API: its traversals are the contract's eight
//! directions, and with every kernel it gives exactly, bit for bit, what
//! version 1 gives on the same data cross-scanned by hand (gather each
//! direction's sequence, the 1-D scan with one group per direction, put each
//! output back on its pixel and add the directions in order). The 1-D
//! kernels are checked against an f64 oracle in tests/scan_kernels.rs.
//! Version 3's form, the dt projection done inside the scan, gives bit for
//! bit version 2's on the projected delta.

use fer_edge::scan::kernel::cross_scan::{
    selective_scan_2d, traversal, GridDims, GridInputs, MAX_DIRECTIONS,
};
use fer_edge::scan::kernel::{
    available, selective_scan, Delta, ScanDims, ScanError, ScanInputs, ScanKernel,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tract_linalg::multithread::{multithread_tract_scope, Executor};

#[path = "common/projection.rs"]
mod projection;
use projection::Projection;

#[test]
fn traversals_are_the_contracts_eight_directions() {
    // a 2 x 3 grid, pixels numbered h*3 + w:  0 1 2 / 3 4 5
    let want: [&[u32]; 8] = [
        &[0, 1, 2, 3, 4, 5], // row-major
        &[0, 3, 1, 4, 2, 5], // column-major
        &[5, 4, 3, 2, 1, 0],
        &[5, 2, 4, 1, 3, 0],
        &[0, 4, 1, 5, 2, 3], // (h, (h + w) mod 3), column by column
        &[0, 5, 1, 3, 2, 4], // (h, (w - h) mod 3)
        &[3, 2, 5, 1, 4, 0],
        &[4, 2, 3, 1, 5, 0],
    ];
    for (k, want) in want.iter().enumerate() {
        assert_eq!(traversal(k, 2, 3), *want, "direction {k}");
    }
    // every direction visits every pixel once, on tall and wide grids too
    for (h, w) in [(5, 7), (7, 5), (1, 4), (4, 1), (6, 6)] {
        for k in 0..MAX_DIRECTIONS {
            let mut seen = traversal(k, h, w);
            seen.sort_unstable();
            assert_eq!(
                seen,
                (0..(h * w) as u32).collect::<Vec<_>>(),
                "k{k} {h}x{w}"
            );
        }
    }
}

/// Random inputs of one 2-D scan.
struct Problem {
    dims: GridDims,
    u: Vec<f32>,
    delta: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    d: Vec<f32>,
    delta_bias: Vec<f32>,
}

impl Problem {
    fn random(dims: GridDims, seed: u64) -> Problem {
        let mut rng = StdRng::seed_from_u64(seed);
        let GridDims {
            batch,
            channels,
            directions,
            state,
            height,
            width,
        } = dims;
        let len = height * width;
        let mut values = |n: usize, low: f32, high: f32| -> Vec<f32> {
            (0..n).map(|_| rng.gen_range(low..high)).collect()
        };
        Problem {
            dims,
            u: values(batch * channels * len, -1.0, 1.0),
            delta: values(batch * directions * channels * len, -4.0, 0.0),
            a: values(directions * channels * state, -8.0, -0.5),
            b: values(batch * directions * state * len, -1.0, 1.0),
            c: values(batch * directions * state * len, -1.0, 1.0),
            d: values(directions * channels, 0.5, 1.5),
            delta_bias: values(directions * channels, -3.0, -1.0),
        }
    }

    fn inputs(&self) -> GridInputs<'_> {
        GridInputs {
            u: &self.u,
            delta: Delta::Rows(&self.delta),
            a: &self.a,
            b: &self.b,
            c: &self.c,
            d: &self.d,
            delta_bias: &self.delta_bias,
            delta_softplus: true,
        }
    }

    fn output_len(&self) -> usize {
        let GridDims {
            batch,
            channels,
            height,
            width,
            ..
        } = self.dims;
        batch * channels * height * width
    }

    /// Its inputs in version 3's form, with `projection` in place of delta.
    fn low_rank_inputs<'a>(&'a self, projection: &'a Projection) -> GridInputs<'a> {
        GridInputs {
            delta: projection.as_delta(),
            ..self.inputs()
        }
    }

    fn run_2d(&self, kernel: &dyn ScanKernel) -> Vec<f32> {
        self.run_2d_on(kernel, &self.inputs())
    }

    fn run_2d_on(&self, kernel: &dyn ScanKernel, inputs: &GridInputs) -> Vec<f32> {
        let mut y = vec![f32::NAN; self.output_len()];
        selective_scan_2d(kernel, &self.dims, inputs, &mut y).unwrap();
        y
    }

    /// Version 1 on the same data, cross-scanned and merged by hand.
    fn run_by_hand(&self, kernel: &dyn ScanKernel) -> Vec<f32> {
        let GridDims {
            batch,
            channels,
            directions: k_count,
            state,
            height,
            width,
        } = self.dims;
        let len = height * width;
        let orders: Vec<Vec<u32>> = (0..k_count).map(|k| traversal(k, height, width)).collect();
        let gather = |rows: &[f32], direction_of_row: &dyn Fn(usize) -> usize| -> Vec<f32> {
            let mut out = Vec::new();
            for (i, row) in rows.chunks_exact(len).enumerate() {
                out.extend(orders[direction_of_row(i)].iter().map(|&p| row[p as usize]));
            }
            out
        };
        // u repeated once per direction: [B, K*Di, L] rows (b, k, c)
        let mut u_rows = Vec::new();
        for item in self.u.chunks_exact(channels * len) {
            for _ in 0..k_count {
                u_rows.extend_from_slice(item);
            }
        }
        let u = gather(&u_rows, &|i| (i / channels) % k_count);
        let delta = gather(&self.delta, &|i| (i / channels) % k_count);
        let b = gather(&self.b, &|i| (i / state) % k_count);
        let c = gather(&self.c, &|i| (i / state) % k_count);
        let dims = ScanDims {
            batch,
            channels: k_count * channels,
            groups: k_count,
            state,
            len,
        };
        let inputs = ScanInputs {
            u: &u,
            delta: &delta,
            a: &self.a,
            b: &b,
            c: &c,
            d: &self.d,
            delta_bias: &self.delta_bias,
            delta_softplus: true,
        };
        let mut sequences = vec![0.0; batch * k_count * channels * len];
        selective_scan(kernel, &dims, &inputs, &mut sequences).unwrap();
        let mut y = vec![0.0f32; self.output_len()];
        for (row, sequence) in sequences.chunks_exact(len).enumerate() {
            let (item, k, channel) = (
                row / (k_count * channels),
                (row / channels) % k_count,
                row % channels,
            );
            let y_row = &mut y[(item * channels + channel) * len..][..len];
            for (&pixel, &value) in orders[k].iter().zip(sequence) {
                y_row[pixel as usize] += value;
            }
        }
        // rows run (item, k, channel): each pixel gets its directions in order
        y
    }
}

fn grid(
    batch: usize,
    channels: usize,
    directions: usize,
    state: usize,
    h: usize,
    w: usize,
) -> GridDims {
    GridDims {
        batch,
        channels,
        directions,
        state,
        height: h,
        width: w,
    }
}

#[test]
fn every_kernel_gives_version_1_cross_scanned_by_hand_bit_for_bit() {
    let cases = [
        grid(1, 16, 8, 16, 5, 7),   // the contract's K, a wide grid
        grid(2, 11, 8, 4, 7, 5),    // tail lanes, tall grid, two items
        grid(1, 8, 4, 16, 6, 6),    // K = 4
        grid(1, 3, 1, 2, 1, 9),     // one direction, one row
        grid(1, 24, 2, 16, 14, 14), // several time chunks (196 steps)
    ];
    for (seed, dims) in cases.into_iter().enumerate() {
        let problem = Problem::random(dims, seed as u64);
        for kernel in available() {
            let fused = problem.run_2d(kernel);
            let by_hand = problem.run_by_hand(kernel);
            assert!(fused.iter().all(|v| v.is_finite()), "{dims:?}");
            assert!(
                fused.iter().any(|v| v.abs() > 1e-3),
                "{dims:?}: all about 0"
            );
            assert_eq!(
                bits(&fused),
                bits(&by_hand),
                "{} on {dims:?}",
                kernel.name()
            );
        }
    }
}

#[test]
fn the_dt_projection_inside_the_scan_gives_version_2_on_the_projected_delta_bit_for_bit() {
    let cases = [
        (grid(1, 16, 8, 16, 5, 7), 4),   // the nano model's R at Di 128
        (grid(2, 11, 8, 4, 7, 5), 8),    // tail lanes, two items
        (grid(1, 3, 1, 2, 1, 9), 1),     // rank 1
        (grid(1, 16, 4, 16, 6, 6), 6),   // terms in a group of 4, then one by one
        (grid(1, 24, 2, 16, 14, 14), 3), // several time chunks
    ];
    for (seed, (dims, rank)) in cases.into_iter().enumerate() {
        let mut problem = Problem::random(dims, 100 + seed as u64);
        let projection = Projection::random(&dims, rank, 200 + seed as u64);
        problem.delta = projection.delta(&dims);
        for kernel in available() {
            let fused = problem.run_2d_on(kernel, &problem.low_rank_inputs(&projection));
            assert!(fused.iter().all(|v| v.is_finite()), "{dims:?}");
            assert!(
                fused.iter().any(|v| v.abs() > 1e-3),
                "{dims:?}: all about 0"
            );
            assert_eq!(
                bits(&fused),
                bits(&problem.run_2d(kernel)),
                "{} on {dims:?}, R = {rank}",
                kernel.name()
            );
        }
    }
}

#[test]
fn thread_count_does_not_change_the_2d_scan() {
    let problem = Problem::random(grid(2, 40, 8, 16, 9, 8), 7);
    for kernel in available() {
        let single = multithread_tract_scope(Executor::SingleThread, || problem.run_2d(kernel));
        let pooled = multithread_tract_scope(Executor::multithread(2), || problem.run_2d(kernel));
        assert_eq!(bits(&single), bits(&pooled), "{}", kernel.name());
    }
}

#[test]
fn bad_directions_and_lengths_are_named() {
    let problem = Problem::random(grid(1, 8, 8, 4, 3, 3), 3);
    let mut y = vec![0.0; problem.output_len()];
    let kernel = available()[0];
    let nine = grid(1, 8, 9, 4, 3, 3);
    let err = selective_scan_2d(kernel, &nine, &problem.inputs(), &mut y).unwrap_err();
    assert_eq!(err, ScanError::Directions(9));
    assert!(err.to_string().contains("K must be 1 to 8"), "{err}");
    let mut inputs = problem.inputs();
    inputs.delta = Delta::Rows(&problem.delta[1..]);
    let err = selective_scan_2d(kernel, &problem.dims, &inputs, &mut y).unwrap_err();
    assert!(err.to_string().contains("`delta` has"), "{err}");
    let projection = Projection::random(&problem.dims, 2, 4);
    let low_rank = |weight: &[f32], low: &[f32], rank: usize| {
        let inputs = GridInputs {
            delta: Delta::LowRank { weight, low, rank },
            ..problem.inputs()
        };
        let mut y = vec![0.0; problem.output_len()];
        selective_scan_2d(kernel, &problem.dims, &inputs, &mut y).unwrap_err()
    };
    let (weight, low) = (&projection.weight, &projection.low);
    let err = low_rank(weight, &low[1..], 2);
    assert!(err.to_string().contains("`dt_low` has"), "{err}");
    let err = low_rank(&weight[1..], low, 2);
    assert!(err.to_string().contains("`dt_weight` has"), "{err}");
    assert_eq!(low_rank(&[], &[], 0), ScanError::NoRank);
}

#[test]
fn scratch_kept_from_earlier_scans_does_not_change_a_scan() {
    // The traversals and reordered Bs/Cs are kept for the process across calls:
    // a first scan, then scans that grow the buffers and extend the same
    // grid's directions, then the first again, which must come out the same.
    let first = Problem::random(grid(1, 8, 4, 16, 6, 6), 11);
    let first_projection = Projection::random(&first.dims, 4, 14);
    let first_inputs = first.low_rank_inputs(&first_projection);
    let others = [
        Problem::random(grid(1, 8, 8, 16, 6, 6), 12),
        Problem::random(grid(2, 16, 8, 16, 9, 8), 13),
    ];
    let projections: Vec<Projection> = (0..)
        .zip(&others)
        .map(|(seed, other)| Projection::random(&other.dims, 8, 15 + seed))
        .collect();
    for kernel in available() {
        let before = multithread_tract_scope(Executor::SingleThread, || {
            first.run_2d_on(kernel, &first_inputs)
        });
        let after = multithread_tract_scope(Executor::SingleThread, || {
            for (other, projection) in others.iter().zip(&projections) {
                other.run_2d(kernel);
                other.run_2d_on(kernel, &other.low_rank_inputs(projection));
            }
            first.run_2d_on(kernel, &first_inputs)
        });
        assert_eq!(bits(&before), bits(&after), "{}", kernel.name());
    }
}

/// The bit patterns of `y`, for exact comparisons that NaN does not defeat.
fn bits(y: &[f32]) -> Vec<u32> {
    y.iter().map(|v| v.to_bits()).collect()
}
