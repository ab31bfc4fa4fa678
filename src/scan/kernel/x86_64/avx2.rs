//! The AVX2+FMA kernel: 8 channels per `__m256`, laid out by [`lanes`]; its
//! maths is [`lane_math!`](super::lane_math) over the primitives below.
//!
//! Its exp has a relative error of at most 1.1e-7 on [-87.33, 88.72], returns
//! exactly 0 below (subnormal results are flushed), +inf above, 1 for ±0 and
//! NaN for NaN; its decay 2^t at most 2.5e-7 on [-126, 0]; its softplus a
//! relative error of at most 3e-7 (see
//! [`approx`](crate::scan::kernel::approx) for the derivation, and the tests
//! below for the sweeps).

use std::arch::x86_64::*;

use super::lane_math;
use crate::scan::kernel::approx::{
    DECAY_ARG_MIN, EXP2_POLY, EXP_ARG_MAX, EXP_ARG_MIN, EXP_POLY, LN_2_HI, LN_2_LO, LOG1P_POLY,
    LOG2_E,
};
use crate::scan::kernel::lanes::{self, GroupRows, LaneMath, LaneParams, Step};
use crate::scan::kernel::{ChannelBlock, ScanKernel};

/// Channels per vector block: one AVX2 register.
const LANES: usize = 8;

/// The lanes of one block.
type Vector = __m256;

/// The AVX2+FMA kernel. Its private field means only [`detect`] can hand one
/// out, so holding one proves the CPU has AVX2 and FMA.
pub(super) struct Avx2Fma(());

static AVX2_FMA: Avx2Fma = Avx2Fma(());

/// The AVX2+FMA kernel, if this CPU supports both.
pub(super) fn detect() -> Option<&'static dyn ScanKernel> {
    let supported = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    supported.then_some(&AVX2_FMA as &dyn ScanKernel)
}

impl ScanKernel for Avx2Fma {
    fn name(&self) -> &'static str {
        "avx2+fma"
    }

    fn vector_channels(&self) -> usize {
        LANES
    }

    fn scan_block(&self, block: &ChannelBlock, y: &mut [f32]) {
        lanes::scan_block(self, block, y);
    }

    fn scan_directions(&self, blocks: &[ChannelBlock], y: &mut [f32]) {
        lanes::scan_directions(self, blocks, y);
    }
}

lane_math!(Avx2Fma, "avx2,fma");

// The primitives `lane_math!` is written over (see its documentation).

#[inline]
#[target_feature(enable = "avx2,fma")]
fn load(lanes: &[f32; LANES]) -> Vector {
    // SAFETY: `lanes` is 8 readable f32s; `loadu` needs no alignment.
    unsafe { _mm256_loadu_ps(lanes.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn store(lanes: &mut [f32; LANES], value: Vector) {
    // SAFETY: `lanes` is 8 writable f32s; `storeu` needs no alignment.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), value) }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn splat(value: f32) -> Vector {
    _mm256_set1_ps(value)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn add(a: Vector, b: Vector) -> Vector {
    _mm256_add_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn sub(a: Vector, b: Vector) -> Vector {
    _mm256_sub_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn mul(a: Vector, b: Vector) -> Vector {
    _mm256_mul_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn div(a: Vector, b: Vector) -> Vector {
    _mm256_div_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn min(a: Vector, b: Vector) -> Vector {
    _mm256_min_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn max(a: Vector, b: Vector) -> Vector {
    _mm256_max_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn fmadd(a: Vector, b: Vector, c: Vector) -> Vector {
    _mm256_fmadd_ps(a, b, c)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn fnmadd(a: Vector, b: Vector, c: Vector) -> Vector {
    _mm256_fnmadd_ps(a, b, c)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn floor(x: Vector) -> Vector {
    _mm256_floor_ps(x)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn times_two_to_the(p: Vector, k: Vector) -> Vector {
    let k_exponent = _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(k));
    _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), k_exponent))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn minus_abs(x: Vector) -> Vector {
    _mm256_or_ps(x, splat(-0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::kernel::approx::checks;

    /// Runs `f` on 8 lanes, or returns None on a CPU without AVX2 and FMA.
    fn on_lanes(f: unsafe fn(__m256) -> __m256) -> Option<impl Fn([f32; 8]) -> [f32; 8]> {
        detect()?;
        Some(move |x: [f32; 8]| {
            let mut out = [0.0; 8];
            // SAFETY: `detect` just confirmed AVX2 and FMA.
            unsafe { store(&mut out, f(load(&x))) };
            out
        })
    }

    #[test]
    fn vector_exp_matches_f64() {
        match on_lanes(exp) {
            Some(exp) => checks::check_exp(&exp),
            None => eprintln!("skipped: this CPU lacks AVX2 or FMA"),
        }
    }

    #[test]
    fn vector_decay_matches_f64() {
        match on_lanes(decay) {
            Some(decay) => checks::check_decay(&decay),
            None => eprintln!("skipped: this CPU lacks AVX2 or FMA"),
        }
    }

    #[test]
    fn vector_softplus_matches_f64() {
        match on_lanes(softplus) {
            Some(softplus) => checks::check_softplus(&softplus),
            None => eprintln!("skipped: this CPU lacks AVX2 or FMA"),
        }
    }

    #[test]
    fn exp_below_max_is_exp_where_the_clamp_changes_nothing() {
        match (on_lanes(exp), on_lanes(exp_below_max)) {
            (Some(exp), Some(exp_below_max)) => checks::check_exp_below_max(&exp, &exp_below_max),
            _ => eprintln!("skipped: this CPU lacks AVX2 or FMA"),
        }
    }
}
