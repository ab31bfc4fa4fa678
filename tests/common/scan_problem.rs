//! A random selective-scan problem, shared by the kernel tests and the
//! kernel benchmark (`benches/scan.rs` includes this file by path).

use fer_edge::scan::kernel::{selective_scan, ScanDims, ScanInputs, ScanKernel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Scan dimensions, positionally: batch, channels (K*Di), groups, state (N), length.
pub fn dims(batch: usize, channels: usize, groups: usize, state: usize, len: usize) -> ScanDims {
    ScanDims {
        batch,
        channels,
        groups,
        state,
        len,
    }
}

/// Where A and delta are drawn from; u, Bs, Cs, D and delta_bias are O(1).
#[derive(Clone, Copy, Debug)]
pub struct Ranges {
    pub a: (f32, f32),
    pub delta: (f32, f32),
}

/// A mix of fast and slow decay, as in a trained model.
pub const TYPICAL: Ranges = Ranges {
    a: (-16.0, -0.05),
    delta: (-4.0, 2.0),
};
/// |dt A| up to 3e4: decays that underflow to 0 in one step.
pub const STIFF: Ranges = Ranges {
    a: (-1000.0, -1.0),
    delta: (-4.0, 30.0),
};
/// dt A around -1e-4: h accumulates over the whole sequence.
pub const SLOW: Ranges = Ranges {
    a: (-0.02, -0.001),
    delta: (-6.0, -2.0),
};

/// One selective scan with its inputs.
pub struct Problem {
    pub dims: ScanDims,
    pub u: Vec<f32>,
    pub delta: Vec<f32>,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub c: Vec<f32>,
    pub d: Vec<f32>,
    pub delta_bias: Vec<f32>,
    pub delta_softplus: bool,
}

impl Problem {
    /// Random inputs from a fixed seed. Without softplus, delta and
    /// delta_bias are drawn non-negative, so dt >= 0 as the model's would be.
    pub fn random(dims: ScanDims, delta_softplus: bool, ranges: Ranges, seed: u64) -> Problem {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut draw = |count: usize, (low, high): (f32, f32)| -> Vec<f32> {
            (0..count).map(|_| rng.gen_range(low..=high)).collect()
        };
        let ScanDims {
            batch,
            channels,
            groups,
            state,
            len,
        } = dims;
        let (delta_low, delta_high) = ranges.delta;
        let (delta_range, bias_range) = if delta_softplus {
            ((delta_low, delta_high), (-1.0, 1.0))
        } else {
            ((0.0, delta_high.max(1.0)), (0.0, 0.5))
        };
        Problem {
            dims,
            u: draw(batch * channels * len, (-2.0, 2.0)),
            delta: draw(batch * channels * len, delta_range),
            a: draw(channels * state, ranges.a),
            b: draw(batch * groups * state * len, (-1.5, 1.5)),
            c: draw(batch * groups * state * len, (-1.5, 1.5)),
            d: draw(channels, (-1.0, 1.0)),
            delta_bias: draw(channels, bias_range),
            delta_softplus,
        }
    }

    pub fn inputs(&self) -> ScanInputs<'_> {
        ScanInputs {
            u: &self.u,
            delta: &self.delta,
            a: &self.a,
            b: &self.b,
            c: &self.c,
            d: &self.d,
            delta_bias: &self.delta_bias,
            delta_softplus: self.delta_softplus,
        }
    }

    pub fn output_len(&self) -> usize {
        self.dims.batch * self.dims.channels * self.dims.len
    }

    /// y from `kernel` on the current executor.
    pub fn run(&self, kernel: &dyn ScanKernel) -> Vec<f32> {
        let mut y = vec![f32::NAN; self.output_len()];
        selective_scan(kernel, &self.dims, &self.inputs(), &mut y).expect("valid problem");
        y
    }
}
