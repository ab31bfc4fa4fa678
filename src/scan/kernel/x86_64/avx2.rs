//! The AVX2+FMA kernel: 8 channels per `__m256`, laid out by [`lanes`]; the
//! vector exp and softplus follow [`approx`](crate::scan::kernel::approx).
//!
//! Its exp has a relative error of at most 1.1e-7 on [-87.33, 88.72], returns
//! exactly 0 below (subnormal results are flushed), +inf above, 1 for ±0 and
//! NaN for NaN; its softplus a relative error of at most 3e-7 (see
//! [`approx`](crate::scan::kernel::approx) for the derivation, and the tests
//! below for the sweeps).
//!
//! Per state update: one multiply for dt A, the exp (two clamps, a multiply,
//! a floor, two FMAs of range reduction, a conversion, an integer add and
//! shift, a multiply and six FMAs of polynomial), a multiply for dt u Bs, an
//! FMA for h and one for y: the exp is three quarters of the arithmetic.

use std::arch::x86_64::*;

use crate::scan::kernel::approx::{
    EXP_ARG_MAX, EXP_ARG_MIN, EXP_POLY, LN_2_HI, LN_2_LO, LOG1P_POLY, LOG2_E,
};
use crate::scan::kernel::lanes::{self, GroupRows, LaneMath, LaneParams, Step};
use crate::scan::kernel::{ChannelBlock, ScanKernel};

/// Channels per vector block: one AVX2 register.
const LANES: usize = 8;

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
}

impl LaneMath<LANES> for Avx2Fma {
    fn prefetch(&self, data: &[f32]) {
        super::prefetch(data);
    }

    fn prepare_steps(
        &self,
        params: &LaneParams<LANES>,
        delta_softplus: bool,
        steps: &mut [Step<LANES>],
    ) {
        // SAFETY: an `Avx2Fma` exists only once `detect` saw AVX2 and FMA.
        unsafe { prepare_steps(params, delta_softplus, steps) }
    }

    fn scan_states(
        &self,
        params: &LaneParams<LANES>,
        rows: &GroupRows,
        h: &mut [[f32; LANES]],
        steps: &mut [Step<LANES>],
    ) {
        // SAFETY: an `Avx2Fma` exists only once `detect` saw AVX2 and FMA.
        unsafe { scan_states(params, rows, h, steps) }
    }
}

/// See [`LaneMath::prepare_steps`].
#[target_feature(enable = "avx2,fma")]
fn prepare_steps(params: &LaneParams<LANES>, delta_softplus: bool, steps: &mut [Step<LANES>]) {
    let delta_bias = load(&params.delta_bias);
    let d = load(&params.d);
    for step in steps {
        let dt = _mm256_add_ps(load(&step.dt), delta_bias);
        let dt = if delta_softplus { softplus(dt) } else { dt };
        let u = load(&step.dt_u);
        store(&mut step.dt, dt);
        store(&mut step.dt_u, _mm256_mul_ps(dt, u));
        store(&mut step.y, _mm256_mul_ps(d, u));
    }
}

/// See [`LaneMath::scan_states`].
#[target_feature(enable = "avx2,fma")]
fn scan_states(
    params: &LaneParams<LANES>,
    rows: &GroupRows,
    h: &mut [[f32; LANES]],
    steps: &mut [Step<LANES>],
) {
    for ((a_n, h_n), (b_row, c_row)) in params.a.iter().zip(h).zip(rows.state_rows()) {
        let a_n = load(a_n);
        let mut h = load(h_n);
        for ((step, &b), &c) in steps.iter_mut().zip(b_row).zip(c_row) {
            let decay = exp(_mm256_mul_ps(load(&step.dt), a_n));
            let input = _mm256_mul_ps(load(&step.dt_u), _mm256_set1_ps(b));
            h = _mm256_fmadd_ps(decay, h, input);
            let y = _mm256_fmadd_ps(_mm256_set1_ps(c), h, load(&step.y));
            store(&mut step.y, y);
        }
        store(h_n, h);
    }
}

/// Lane-wise e^x, as described in [`approx`](crate::scan::kernel::approx).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp(x: __m256) -> __m256 {
    // `max`/`min` return their second operand when either is NaN: keep x there.
    let x = _mm256_min_ps(splat(EXP_ARG_MAX), _mm256_max_ps(splat(EXP_ARG_MIN), x));
    let k = _mm256_floor_ps(_mm256_mul_ps(x, splat(LOG2_E)));
    let r = _mm256_fnmadd_ps(k, splat(LN_2_HI), x);
    let r = _mm256_fnmadd_ps(k, splat(LN_2_LO), r);
    let biased_k = _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127));
    let two_to_k = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased_k));
    _mm256_fmadd_ps(
        _mm256_mul_ps(two_to_k, r),
        polynomial(r, &EXP_POLY),
        two_to_k,
    )
}

/// Lane-wise ln(1 + e^x), as described in [`approx`](crate::scan::kernel::approx).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn softplus(x: __m256) -> __m256 {
    let minus_abs_x = _mm256_or_ps(x, splat(-0.0));
    let e = exp(minus_abs_x);
    let s = _mm256_div_ps(e, _mm256_add_ps(splat(2.0), e));
    let log1p_e = _mm256_mul_ps(s, polynomial(_mm256_mul_ps(s, s), &LOG1P_POLY));
    _mm256_add_ps(_mm256_max_ps(x, _mm256_setzero_ps()), log1p_e)
}

/// The sum of `coefficients[i] * x^i`, in Horner form.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn polynomial(x: __m256, coefficients: &[f32]) -> __m256 {
    let (&highest, lower) = coefficients
        .split_last()
        .expect("a polynomial has coefficients");
    lower
        .iter()
        .rev()
        .fold(splat(highest), |acc, &c| _mm256_fmadd_ps(acc, x, splat(c)))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn splat(value: f32) -> __m256 {
    _mm256_set1_ps(value)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn load(lanes: &[f32; LANES]) -> __m256 {
    // SAFETY: `lanes` is 8 readable f32s; `loadu` needs no alignment.
    unsafe { _mm256_loadu_ps(lanes.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn store(lanes: &mut [f32; LANES], value: __m256) {
    // SAFETY: `lanes` is 8 writable f32s; `storeu` needs no alignment.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), value) }
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
    fn vector_softplus_matches_f64() {
        match on_lanes(softplus) {
            Some(softplus) => checks::check_softplus(&softplus),
            None => eprintln!("skipped: this CPU lacks AVX2 or FMA"),
        }
    }
}
