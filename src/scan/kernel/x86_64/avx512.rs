//! The AVX-512F kernel: 16 channels per `__m512`, laid out by [`lanes`]; the
//! vector exp and softplus follow [`approx`](crate::scan::kernel::approx),
//! step for step as in the AVX2 kernel (the floor is `vrndscaleps` rounding
//! down), so the two agree bit for bit.
//!
//! Twice the AVX2 kernel's channels per instruction: the scan is bound by the
//! exp's arithmetic, not by memory, wherever a core has two 512-bit FMA
//! pipes.

use std::arch::x86_64::*;

use crate::scan::kernel::approx::{
    EXP_ARG_MAX, EXP_ARG_MIN, EXP_POLY, LN_2_HI, LN_2_LO, LOG1P_POLY, LOG2_E,
};
use crate::scan::kernel::lanes::{self, GroupRows, LaneMath, LaneParams, Step};
use crate::scan::kernel::{ChannelBlock, ScanKernel};

/// Channels per vector block: one AVX-512 register.
const LANES: usize = 16;

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
}

impl LaneMath<LANES> for Avx512 {
    fn prefetch(&self, data: &[f32]) {
        super::prefetch(data);
    }

    fn prepare_steps(
        &self,
        params: &LaneParams<LANES>,
        delta_softplus: bool,
        steps: &mut [Step<LANES>],
    ) {
        // SAFETY: an `Avx512` exists only once `detect` saw AVX-512F.
        unsafe { prepare_steps(params, delta_softplus, steps) }
    }

    fn scan_states(
        &self,
        params: &LaneParams<LANES>,
        rows: &GroupRows,
        h: &mut [[f32; LANES]],
        steps: &mut [Step<LANES>],
    ) {
        // SAFETY: an `Avx512` exists only once `detect` saw AVX-512F.
        unsafe { scan_states(params, rows, h, steps) }
    }
}

/// See [`LaneMath::prepare_steps`].
#[target_feature(enable = "avx512f")]
fn prepare_steps(params: &LaneParams<LANES>, delta_softplus: bool, steps: &mut [Step<LANES>]) {
    let delta_bias = load(&params.delta_bias);
    let d = load(&params.d);
    for step in steps {
        let dt = _mm512_add_ps(load(&step.dt), delta_bias);
        let dt = if delta_softplus { softplus(dt) } else { dt };
        let u = load(&step.dt_u);
        store(&mut step.dt, dt);
        store(&mut step.dt_u, _mm512_mul_ps(dt, u));
        store(&mut step.y, _mm512_mul_ps(d, u));
    }
}

/// See [`LaneMath::scan_states`].
#[target_feature(enable = "avx512f")]
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
            let decay = exp(_mm512_mul_ps(load(&step.dt), a_n));
            let input = _mm512_mul_ps(load(&step.dt_u), splat(b));
            h = _mm512_fmadd_ps(decay, h, input);
            let y = _mm512_fmadd_ps(splat(c), h, load(&step.y));
            store(&mut step.y, y);
        }
        store(h_n, h);
    }
}

/// Lane-wise e^x, as described in [`approx`](crate::scan::kernel::approx).
#[inline]
#[target_feature(enable = "avx512f")]
fn exp(x: __m512) -> __m512 {
    // `max`/`min` return their second operand when either is NaN: keep x there.
    let x = _mm512_min_ps(splat(EXP_ARG_MAX), _mm512_max_ps(splat(EXP_ARG_MIN), x));
    let k = floor(_mm512_mul_ps(x, splat(LOG2_E)));
    let r = _mm512_fnmadd_ps(k, splat(LN_2_HI), x);
    let r = _mm512_fnmadd_ps(k, splat(LN_2_LO), r);
    let biased_k = _mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127));
    let two_to_k = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(biased_k));
    _mm512_fmadd_ps(
        _mm512_mul_ps(two_to_k, r),
        polynomial(r, &EXP_POLY),
        two_to_k,
    )
}

/// Lane-wise ln(1 + e^x), as described in [`approx`](crate::scan::kernel::approx).
#[inline]
#[target_feature(enable = "avx512f")]
fn softplus(x: __m512) -> __m512 {
    // -|x|: the sign bit set (AVX-512F has no float `or`; the integer one is the same bits).
    let minus_abs_x = _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_castps_si512(x),
        _mm512_set1_epi32(i32::MIN),
    ));
    let e = exp(minus_abs_x);
    let s = _mm512_div_ps(e, _mm512_add_ps(splat(2.0), e));
    let log1p_e = _mm512_mul_ps(s, polynomial(_mm512_mul_ps(s, s), &LOG1P_POLY));
    _mm512_add_ps(_mm512_max_ps(x, _mm512_setzero_ps()), log1p_e)
}

/// Lane-wise floor, NaN passing through.
#[inline]
#[target_feature(enable = "avx512f")]
fn floor(x: __m512) -> __m512 {
    _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(x)
}

/// The sum of `coefficients[i] * x^i`, in Horner form.
#[inline]
#[target_feature(enable = "avx512f")]
fn polynomial(x: __m512, coefficients: &[f32]) -> __m512 {
    let (&highest, lower) = coefficients
        .split_last()
        .expect("a polynomial has coefficients");
    lower
        .iter()
        .rev()
        .fold(splat(highest), |acc, &c| _mm512_fmadd_ps(acc, x, splat(c)))
}

#[inline]
#[target_feature(enable = "avx512f")]
fn splat(value: f32) -> __m512 {
    _mm512_set1_ps(value)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load(lanes: &[f32; LANES]) -> __m512 {
    // SAFETY: `lanes` is 16 readable f32s; `loadu` needs no alignment.
    unsafe { _mm512_loadu_ps(lanes.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn store(lanes: &mut [f32; LANES], value: __m512) {
    // SAFETY: `lanes` is 16 writable f32s; `storeu` needs no alignment.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), value) }
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
    fn vector_softplus_matches_f64() {
        match on_lanes(softplus) {
            Some(softplus) => checks::check_softplus(&softplus),
            None => eprintln!("skipped: this CPU lacks AVX-512F"),
        }
    }
}
