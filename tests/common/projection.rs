//! A random version 3 dt projection for 2-D scan tests (tests/cross_scan.rs
//! and tests/cuda_scan.rs include this file by path).

use fer_edge::scan::kernel::cross_scan::GridDims;
use fer_edge::scan::kernel::Delta;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Version 3's dt projection of a 2-D scan problem: `dt_low` `[B, K, R, H, W]`
/// and `dt_weight` `[K*Di, R]`.
pub struct Projection {
    pub rank: usize,
    pub low: Vec<f32>,
    pub weight: Vec<f32>,
}

impl Projection {
    pub fn random(dims: &GridDims, rank: usize, seed: u64) -> Projection {
        let mut rng = StdRng::seed_from_u64(seed);
        let GridDims {
            batch,
            channels,
            directions,
            height,
            width,
            ..
        } = *dims;
        let mut values =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect() };
        Projection {
            rank,
            low: values(batch * directions * rank * height * width),
            weight: values(directions * channels * rank),
        }
    }

    /// The delta it stands for, `[B, K, Di, H, W]`: each value
    /// `sum_r dt_weight[k*Di + c, r] dt_low[b, k, r, p]`, as FMAs on 0 with
    /// r in order (how every kernel forms it).
    pub fn delta(&self, dims: &GridDims) -> Vec<f32> {
        let (rank, len) = (self.rank, dims.height * dims.width);
        let mut delta = Vec::new();
        for (direction, low) in self.low.chunks_exact(rank * len).enumerate() {
            let k = direction % dims.directions;
            for weight in self.weight[k * dims.channels * rank..]
                .chunks_exact(rank)
                .take(dims.channels)
            {
                delta.extend((0..len).map(|p| {
                    let terms = weight.iter().zip(low.chunks_exact(len));
                    terms.fold(0.0f32, |sum, (&w, low_r)| w.mul_add(low_r[p], sum))
                }));
            }
        }
        delta
    }

    /// The scan's delta input in version 3's form.
    pub fn as_delta(&self) -> Delta<'_> {
        Delta::LowRank {
            weight: &self.weight,
            low: &self.low,
            rank: self.rank,
        }
    }
}
