//! The AVX-512F kernel: 16 channels per `__m512`, laid out by [`lanes`]; its
//! maths is [`lane_math!`](super::lane_math) over the primitives below (the
//! floor is `vrndscaleps` rounding down), the same steps as the AVX2 kernel,
//! so the two agree bit for bit.
//!
//! Twice the AVX2 kernel's channels per instruction; on the development VM
//! (Intel Xeon, 2 cores) 1.4x its throughput (`cargo bench --bench scan`,
//! docs/performance.md).

use std::arch::x86_64::*;

use super::lane_math;
use crate::scan::kernel::approx::{
    DECAY_ARG_MIN, EXP2_POLY, EXP_ARG_MAX, EXP_ARG_MIN, EXP_POLY, LN_2_HI, LN_2_LO, LOG1P_POLY,
    LOG2_E,
};
use crate::scan::kernel::lanes::{self, GroupRows, LaneMath, LaneParams, Step};
use crate::scan::kernel::{ChannelBlock, ScanKernel};

/// Channels per vector block: one AVX-512 register.
const LANES: usize = 16;

/// The lanes of one block.
type Vector = __m512;

/// The AVX-512F kernel. Its private field means only [`detect`] can hand one
/// out, so holding one proves the CPU has AVX-512F.
pub(super) struct Avx512(());

static AVX512: Avx512 = Avx512(());

/// The AVX-512F kernel, if this CPU supports it.
pub(super) fn detect() -> Option<&'static dyn ScanKernel> {
    is_x86_feature_detected!("avx512f").then_some(&AVX512 as &dyn ScanKernel)
}

impl ScanKernel for Avx512 {
    fn name(&self) -> &'static str {
        "avx512f"
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

lane_math!(Avx512, "avx512f");

// The primitives `lane_math!` is written over (see its documentation).

#[inline]
#[target_feature(enable = "avx512f")]
fn load(lanes: &[f32; LANES]) -> Vector {
    // SAFETY: `lanes` is 16 readable f32s; `loadu` needs no alignment.
    unsafe { _mm512_loadu_ps(lanes.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn store(lanes: &mut [f32; LANES], value: Vector) {
    // SAFETY: `lanes` is 16 writable f32s; `storeu` needs no alignment.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), value) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn splat(value: f32) -> Vector {
    _mm512_set1_ps(value)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn add(a: Vector, b: Vector) -> Vector {
    _mm512_add_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn sub(a: Vector, b: Vector) -> Vector {
    _mm512_sub_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn mul(a: Vector, b: Vector) -> Vector {
    _mm512_mul_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn div(a: Vector, b: Vector) -> Vector {
    _mm512_div_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn min(a: Vector, b: Vector) -> Vector {
    _mm512_min_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn max(a: Vector, b: Vector) -> Vector {
    _mm512_max_ps(a, b)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn fmadd(a: Vector, b: Vector, c: Vector) -> Vector {
    _mm512_fmadd_ps(a, b, c)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn fnmadd(a: Vector, b: Vector, c: Vector) -> Vector {
    _mm512_fnmadd_ps(a, b, c)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn floor(x: Vector) -> Vector {
    _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(x)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn times_two_to_the(p: Vector, k: Vector) -> Vector {
    let k_exponent = _mm512_slli_epi32::<23>(_mm512_cvtps_epi32(k));
    _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(p), k_exponent))
}

#[inline]
#[target_feature(enable = "avx512f")]
fn minus_abs(x: Vector) -> Vector {
    // The sign bit set: AVX-512F has no float `or`; the integer one is the same bits.
    _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_castps_si512(x),
        _mm512_set1_epi32(i32::MIN),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::kernel::approx::checks;

    /// Runs `f` on the sweeps' 8 values, twice over in the 16 lanes (the
    /// halves must agree), or returns None on a CPU without AVX-512F.
    fn on_lanes(f: unsafe fn(__m512) -> __m512) -> Option<impl Fn([f32; 8]) -> [f32; 8]> {
        detect()?;
        Some(move |x: [f32; 8]| {
            let mut wide = [0.0; LANES];
            wide[..8].copy_from_slice(&x);
            wide[8..].copy_from_slice(&x);
            let mut out = [0.0; LANES];
            // SAFETY: `detect` just confirmed AVX-512F.
            unsafe { store(&mut out, f(load(&wide))) };
            let (low, high) = out.split_at(8);
            assert_eq!(
                low.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                high.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "the two halves of the register disagree on {x:?}"
            );
            low.try_into().expect("8 lanes")
        })
    }

    #[test]
    fn vector_exp_matches_f64() {
        match on_lanes(exp) {
            Some(exp) => checks::check_exp(&exp),
            None => eprintln!("skipped: this CPU lacks AVX-512F"),
        }
    }

    #[test]
    fn vector_decay_matches_f64() {
        match on_lanes(decay) {
            Some(decay) => checks::check_decay(&decay),
            None => eprintln!("skipped: this CPU lacks AVX-512F"),
        }
    }

    #[test]
    fn vector_softplus_matches_f64() {
        match on_lanes(softplus) {
            Some(softplus) => checks::check_softplus(&softplus),
            None => eprintln!("skipped: this CPU lacks AVX-512F"),
        }
    }

    #[test]
    fn exp_below_max_is_exp_where_the_clamp_changes_nothing() {
        match (on_lanes(exp), on_lanes(exp_below_max)) {
            (Some(exp), Some(exp_below_max)) => checks::check_exp_below_max(&exp, &exp_below_max),
            _ => eprintln!("skipped: this CPU lacks AVX-512F"),
        }
    }
}
