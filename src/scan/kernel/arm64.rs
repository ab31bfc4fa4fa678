//! The NEON kernel: 8 channels per pair of `float32x4_t`, laid out by
//! [`lanes`]; the vector exp and softplus follow [`approx`](super::approx).
//! NEON is part of every AArch64 CPU (Raspberry Pi 4 and 5, Jetson), so no
//! detection is needed.
//!
//! Its exp has a relative error of at most 1.1e-7 on [-87.33, 88.72], returns
//! exactly 0 below (subnormal results are flushed), +inf above, 1 for ±0 and
//! NaN for NaN; its decay 2^t at most 2.5e-7 on [-126, 0]; its softplus a
//! relative error of at most 3e-7 (see
//! [`approx`](super::approx) for the derivation, and the tests below for the sweeps). Every
//! step is the same IEEE operation as in the AVX2 kernel, so the two agree
//! bit for bit.
//!
//! Eight lanes in two registers, rather than four in one, share the block
//! layout with the AVX2 kernel and give every step two independent exp and h
//! chains to hide FMA latency. Only correctness could be checked here (under
//! qemu), not speed on a real Cortex-A72/A76.

use std::arch::aarch64::*;
use std::arch::asm;

use super::approx::{
    DECAY_ARG_MIN, EXP2_POLY, EXP_ARG_MAX, EXP_ARG_MIN, EXP_POLY, LN_2_HI, LN_2_LO, LOG1P_POLY,
    LOG2_E,
};
use super::lanes::{self, GroupRows, LaneMath, LaneParams, Step};
use super::{ChannelBlock, ScanKernel};

/// f32s per 64-byte cache line (Cortex-A72, A76 and Carmel alike).
const F32_PER_CACHE_LINE: usize = 16;

/// Channels per vector block: two NEON registers.
const LANES: usize = 8;

/// The lanes of one block: two NEON registers.
type Lanes = [float32x4_t; 2];

/// The NEON kernel.
pub(super) struct Neon;

static NEON: Neon = Neon;

/// The NEON kernel, which every AArch64 CPU can run.
pub(super) fn kernel() -> &'static dyn ScanKernel {
    &NEON
}

impl ScanKernel for Neon {
    fn name(&self) -> &'static str {
        "neon"
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

impl LaneMath<LANES> for Neon {
    fn prefetch(&self, data: &[f32]) {
        for line in data.chunks(F32_PER_CACHE_LINE) {
            // SAFETY: PRFM is a hint: it never faults and changes no register,
            // flag or memory.
            unsafe {
                asm!(
                    "prfm pldl1keep, [{line}]",
                    line = in(reg) line.as_ptr(),
                    options(nostack, readonly, preserves_flags)
                );
            }
        }
    }

    fn add_terms<const R: usize>(
        &self,
        weight: &[[f32; LANES]],
        rows: &[&[f32]],
        first: bool,
        steps: &mut [Step<LANES>],
    ) {
        // SAFETY: NEON is part of the AArch64 baseline: every such CPU has it.
        unsafe { add_terms::<R>(weight, rows, first, steps) }
    }

    fn prepare_steps(
        &self,
        params: &LaneParams<LANES>,
        delta_softplus: bool,
        steps: &mut [Step<LANES>],
    ) {
        // SAFETY: NEON is part of the AArch64 baseline: every such CPU has it.
        unsafe { prepare_steps(params, delta_softplus, steps) }
    }

    fn scan_states<const CLAMP_ABOVE: bool>(
        &self,
        params: &LaneParams<LANES>,
        rows: &GroupRows,
        h: &mut [[f32; LANES]],
        steps: &mut [Step<LANES>],
    ) {
        // SAFETY: NEON is part of the AArch64 baseline: every such CPU has it.
        unsafe { scan_states::<CLAMP_ABOVE>(params, rows, h, steps) }
    }
}

/// See [`LaneMath::add_terms`].
#[target_feature(enable = "neon")]
fn add_terms<const R: usize>(
    weight: &[[f32; LANES]],
    rows: &[&[f32]],
    first: bool,
    steps: &mut [Step<LANES>],
) {
    let weight: [Lanes; R] = std::array::from_fn(|r| load(&weight[r]));
    let rows: [&[f32]; R] = std::array::from_fn(|r| &rows[r][..steps.len()]);
    for (t, step) in steps.iter_mut().enumerate() {
        let mut sum = if first {
            both(|_| vdupq_n_f32(0.0))
        } else {
            load(&step.dt)
        };
        for (weight_r, row) in weight.iter().zip(rows) {
            sum = both(|i| vfmaq_n_f32(sum[i], weight_r[i], row[t]));
        }
        store(&mut step.dt, sum);
    }
}

/// See [`LaneMath::prepare_steps`].
#[target_feature(enable = "neon")]
fn prepare_steps(params: &LaneParams<LANES>, delta_softplus: bool, steps: &mut [Step<LANES>]) {
    let delta_bias = load(&params.delta_bias);
    let d = load(&params.d);
    for step in steps {
        let (delta, u) = (load(&step.dt), load(&step.dt_u));
        let dt = both(|i| {
            let dt = vaddq_f32(delta[i], delta_bias[i]);
            if delta_softplus {
                softplus(dt)
            } else {
                dt
            }
        });
        store(&mut step.dt, dt);
        store(&mut step.dt_u, both(|i| vmulq_f32(dt[i], u[i])));
        store(&mut step.y, both(|i| vmulq_f32(d[i], u[i])));
    }
}

/// See [`LaneMath::scan_states`].
#[target_feature(enable = "neon")]
fn scan_states<const CLAMP_ABOVE: bool>(
    params: &LaneParams<LANES>,
    rows: &GroupRows,
    h: &mut [[f32; LANES]],
    steps: &mut [Step<LANES>],
) {
    for ((a_n, h_n), (b_row, c_row)) in params.a.iter().zip(h).zip(rows.state_rows()) {
        let a_n = load(a_n);
        let a_n_log2_e = both(|i| vmulq_n_f32(a_n[i], LOG2_E));
        let mut h = load(h_n);
        for ((step, &b), &c) in steps.iter_mut().zip(b_row).zip(c_row) {
            let (dt, dt_u, y) = (load(&step.dt), load(&step.dt_u), load(&step.y));
            h = both(|i| {
                let decay = if CLAMP_ABOVE {
                    exp(vmulq_f32(dt[i], a_n[i]))
                } else {
                    decay(vmulq_f32(dt[i], a_n_log2_e[i]))
                };
                vfmaq_f32(vmulq_n_f32(dt_u[i], b), decay, h[i])
            });
            store(&mut step.y, both(|i| vfmaq_n_f32(y[i], h[i], c)));
        }
        store(h_n, h);
    }
}

/// `f` applied to both registers of a block.
#[inline(always)]
fn both(f: impl Fn(usize) -> float32x4_t) -> Lanes {
    [f(0), f(1)]
}

/// Lane-wise e^x, as described in [`approx`](super::approx).
#[inline]
#[target_feature(enable = "neon")]
fn exp(x: float32x4_t) -> float32x4_t {
    // `vmax`/`vmin` return NaN when either operand is NaN: x's NaN survives.
    exp_below_max(vminq_f32(vdupq_n_f32(EXP_ARG_MAX), x))
}

/// [`exp`] of an x that is at most `EXP_ARG_MAX` (or NaN), which its clamp
/// from above would leave as it is: the same bits, one instruction fewer.
#[inline]
#[target_feature(enable = "neon")]
fn exp_below_max(x: float32x4_t) -> float32x4_t {
    let x = vmaxq_f32(vdupq_n_f32(EXP_ARG_MIN), x);
    let k = vrndmq_f32(vmulq_n_f32(x, LOG2_E));
    let r = vfmsq_n_f32(x, k, LN_2_HI);
    let r = vfmsq_n_f32(r, k, LN_2_LO);
    let two_to_k = times_two_to_the(vdupq_n_f32(1.0), k);
    vfmaq_f32(two_to_k, vmulq_f32(two_to_k, r), polynomial(r, &EXP_POLY))
}

/// Lane-wise 2^t for t <= 0 (or NaN): the decay e^(dt A) as 2^(dt A log2 e),
/// as described in [`approx`](super::approx).
#[inline]
#[target_feature(enable = "neon")]
fn decay(t: float32x4_t) -> float32x4_t {
    // `vmax` returns NaN when either operand is NaN: t's NaN survives.
    let t = vmaxq_f32(vdupq_n_f32(DECAY_ARG_MIN), t);
    let k = vrndmq_f32(t);
    let f = vsubq_f32(t, k);
    let two_to_f = vfmaq_f32(vdupq_n_f32(1.0), f, polynomial(f, &EXP2_POLY));
    times_two_to_the(two_to_f, k)
}

/// p 2^k lane-wise for integral k and a normal result, k added into p's
/// exponent field; with p = 1 also 0 at k = -127 and +inf at k = 128.
#[inline]
#[target_feature(enable = "neon")]
fn times_two_to_the(p: float32x4_t, k: float32x4_t) -> float32x4_t {
    let k_exponent = vshlq_n_s32::<23>(vcvtq_s32_f32(k));
    vreinterpretq_f32_s32(vaddq_s32(vreinterpretq_s32_f32(p), k_exponent))
}

/// Lane-wise ln(1 + e^x), as described in [`approx`](super::approx).
#[inline]
#[target_feature(enable = "neon")]
fn softplus(x: float32x4_t) -> float32x4_t {
    let minus_abs_x = vnegq_f32(vabsq_f32(x));
    let e = exp_below_max(minus_abs_x);
    let s = vdivq_f32(e, vaddq_f32(vdupq_n_f32(2.0), e));
    let log1p_e = vmulq_f32(s, polynomial(vmulq_f32(s, s), &LOG1P_POLY));
    vaddq_f32(vmaxq_f32(x, vdupq_n_f32(0.0)), log1p_e)
}

/// The sum of `coefficients[i] * x^i`, in Horner form.
#[inline]
#[target_feature(enable = "neon")]
fn polynomial(x: float32x4_t, coefficients: &[f32]) -> float32x4_t {
    let (&highest, lower) = coefficients
        .split_last()
        .expect("a polynomial has coefficients");
    lower.iter().rev().fold(vdupq_n_f32(highest), |acc, &c| {
        vfmaq_f32(vdupq_n_f32(c), acc, x)
    })
}

#[inline]
#[target_feature(enable = "neon")]
fn load(lanes: &[f32; LANES]) -> Lanes {
    // SAFETY: `lanes` is 8 readable f32s; `vld1q` needs only f32 alignment.
    unsafe { [vld1q_f32(lanes.as_ptr()), vld1q_f32(lanes.as_ptr().add(4))] }
}

#[inline]
#[target_feature(enable = "neon")]
fn store(lanes: &mut [f32; LANES], value: Lanes) {
    // SAFETY: `lanes` is 8 writable f32s; `vst1q` needs only f32 alignment.
    unsafe {
        vst1q_f32(lanes.as_mut_ptr(), value[0]);
        vst1q_f32(lanes.as_mut_ptr().add(4), value[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::approx::checks;
    use super::*;

    /// Runs `f` on 8 lanes.
    fn on_lanes(f: unsafe fn(float32x4_t) -> float32x4_t) -> impl Fn([f32; 8]) -> [f32; 8] {
        move |x: [f32; 8]| {
            let mut out = [0.0; 8];
            // SAFETY: NEON is part of the AArch64 baseline: every such CPU has it.
            unsafe { store(&mut out, both(|i| f(load(&x)[i]))) };
            out
        }
    }

    #[test]
    fn vector_exp_matches_f64() {
        checks::check_exp(&on_lanes(exp));
    }

    #[test]
    fn vector_decay_matches_f64() {
        checks::check_decay(&on_lanes(decay));
    }

    #[test]
    fn vector_softplus_matches_f64() {
        checks::check_softplus(&on_lanes(softplus));
    }

    #[test]
    fn exp_below_max_is_exp_where_the_clamp_changes_nothing() {
        checks::check_exp_below_max(&on_lanes(exp), &on_lanes(exp_below_max));
    }
}
