//! The x86_64 kernels, each laid out by [`lanes`](super::lanes) and picked
//! at run time by what the CPU has: AVX-512F (16 channels per `__m512`), then
//! AVX2+FMA (8 per `__m256`). Their maths is written once, in [`lane_math!`],
//! over a handful of vector primitives each width defines; every step is the
//! same IEEE operation at either width, so the two agree bit for bit with each
//! other and with NEON.

use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};

use super::ScanKernel;

mod avx2;
mod avx512;

/// The AVX2+FMA e^x, for the convolutions' SiLU.
pub(crate) use avx2::exp as exp_avx2;

/// f32s per 64-byte cache line.
const F32_PER_CACHE_LINE: usize = 16;

/// The kernels this CPU can run, fastest first.
pub(super) fn detect() -> impl Iterator<Item = &'static dyn ScanKernel> {
    [avx512::detect(), avx2::detect()].into_iter().flatten()
}

/// Hints the CPU to start loading `data` into the cache.
fn prefetch(data: &[f32]) {
    for line in data.chunks(F32_PER_CACHE_LINE) {
        // SAFETY: SSE is part of x86_64; a prefetch never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) }
    }
}

/// Writes `$kernel`'s [`LaneMath`](super::lanes::LaneMath) and its vector
/// exp, decay and softplus (as described in [`approx`](super::approx)), all
/// compiled for `$feature`, from the primitives the invoking module defines:
/// `Vector`, `LANES`, `load`, `store`, `splat`, `add`, `sub`, `mul`, `div`, `min`,
/// `max`, `fmadd(a, b, c)` = a b + c, `fnmadd(a, b, c)` = c - a b, `floor`,
/// `times_two_to_the(p, k)` (p 2^k for integral k and a normal result, k
/// added into p's exponent field; with p = 1 also 0 at k = -127 and +inf at
/// k = 128) and `minus_abs`. Each is a single
/// instruction or a few, marked `#[inline] #[target_feature(enable =
/// $feature)]`, so all of it inlines.
///
/// Per state update of a trained model (dt A <= 0): one multiply for
/// dt A log2 e, the decay 2^(dt A log2 e) (a clamp, a floor, a subtraction,
/// five FMAs of polynomial, three integer operations for the 2^k), a
/// multiply for dt u Bs, an FMA for h and one for y: nine operations on the
/// multiply-add ports, where the exp of dt A took fourteen (the scan ops
/// 19-27% faster on a Zen 3, docs/performance.md).
macro_rules! lane_math {
    ($kernel:ty, $feature:literal) => {
        impl LaneMath<LANES> for $kernel {
            fn prefetch(&self, data: &[f32]) {
                super::prefetch(data);
            }

            fn add_terms<const R: usize>(
                &self,
                weight: &[[f32; LANES]],
                rows: &[&[f32]],
                first: bool,
                steps: &mut [Step<LANES>],
            ) {
                // SAFETY: the kernel exists only once `detect` saw `$feature`.
                unsafe { add_terms::<R>(weight, rows, first, steps) }
            }

            fn prepare_steps(
                &self,
                params: &LaneParams<LANES>,
                delta_softplus: bool,
                steps: &mut [Step<LANES>],
            ) {
                // SAFETY: the kernel exists only once `detect` saw `$feature`.
                unsafe { prepare_steps(params, delta_softplus, steps) }
            }

            fn scan_states<const CLAMP_ABOVE: bool>(
                &self,
                params: &LaneParams<LANES>,
                rows: &GroupRows,
                h: &mut [[f32; LANES]],
                steps: &mut [Step<LANES>],
            ) {
                // SAFETY: the kernel exists only once `detect` saw `$feature`.
                unsafe { scan_states::<CLAMP_ABOVE>(params, rows, h, steps) }
            }
        }

        /// See [`LaneMath::add_terms`].
        #[target_feature(enable = $feature)]
        fn add_terms<const R: usize>(
            weight: &[[f32; LANES]],
            rows: &[&[f32]],
            first: bool,
            steps: &mut [Step<LANES>],
        ) {
            let weight: [Vector; R] = std::array::from_fn(|r| load(&weight[r]));
            let rows: [&[f32]; R] = std::array::from_fn(|r| &rows[r][..steps.len()]);
            for (t, step) in steps.iter_mut().enumerate() {
                let mut sum = if first { splat(0.0) } else { load(&step.dt) };
                for (&weight_r, row) in weight.iter().zip(rows) {
                    sum = fmadd(weight_r, splat(row[t]), sum);
                }
                store(&mut step.dt, sum);
            }
        }

        /// See [`LaneMath::prepare_steps`].
        #[target_feature(enable = $feature)]
        fn prepare_steps(
            params: &LaneParams<LANES>,
            delta_softplus: bool,
            steps: &mut [Step<LANES>],
        ) {
            let delta_bias = load(&params.delta_bias);
            let d = load(&params.d);
            for step in steps {
                let dt = add(load(&step.dt), delta_bias);
                let dt = if delta_softplus { softplus(dt) } else { dt };
                let u = load(&step.dt_u);
                store(&mut step.dt, dt);
                store(&mut step.dt_u, mul(dt, u));
                store(&mut step.y, mul(d, u));
            }
        }

        /// See [`LaneMath::scan_states`].
        #[target_feature(enable = $feature)]
        fn scan_states<const CLAMP_ABOVE: bool>(
            params: &LaneParams<LANES>,
            rows: &GroupRows,
            h: &mut [[f32; LANES]],
            steps: &mut [Step<LANES>],
        ) {
            for ((a_n, h_n), (b_row, c_row)) in params.a.iter().zip(h).zip(rows.state_rows()) {
                let a_n = load(a_n);
                let a_n_log2_e = mul(a_n, splat(LOG2_E));
                let mut h = load(h_n);
                for ((step, &b), &c) in steps.iter_mut().zip(b_row).zip(c_row) {
                    let dt = load(&step.dt);
                    let decay = if CLAMP_ABOVE {
                        exp(mul(dt, a_n))
                    } else {
                        decay(mul(dt, a_n_log2_e))
                    };
                    let input = mul(load(&step.dt_u), splat(b));
                    h = fmadd(decay, h, input);
                    let y = fmadd(splat(c), h, load(&step.y));
                    store(&mut step.y, y);
                }
                store(h_n, h);
            }
        }

        /// Lane-wise e^x, as described in [`approx`](crate::scan::kernel::approx).
        #[inline]
        #[target_feature(enable = $feature)]
        pub(crate) fn exp(x: Vector) -> Vector {
            // `max`/`min` return their second operand when either is NaN: keep x there.
            exp_below_max(min(splat(EXP_ARG_MAX), x))
        }

        /// [`exp`] of an x that is at most `EXP_ARG_MAX` (or NaN), which
        /// its clamp from above would leave as it is: the same bits, one
        /// instruction fewer.
        #[inline]
        #[target_feature(enable = $feature)]
        fn exp_below_max(x: Vector) -> Vector {
            let x = max(splat(EXP_ARG_MIN), x);
            let k = floor(mul(x, splat(LOG2_E)));
            let r = fnmadd(k, splat(LN_2_HI), x);
            let r = fnmadd(k, splat(LN_2_LO), r);
            let two_to_k = times_two_to_the(splat(1.0), k);
            fmadd(mul(two_to_k, r), polynomial(r, &EXP_POLY), two_to_k)
        }

        /// Lane-wise 2^t for t <= 0 (or NaN): the decay e^(dt A) as 2^(dt A
        /// log2 e), as described in [`approx`](crate::scan::kernel::approx).
        #[inline]
        #[target_feature(enable = $feature)]
        fn decay(t: Vector) -> Vector {
            // `max` returns its second operand when either is NaN: keep t there.
            let t = max(splat(DECAY_ARG_MIN), t);
            let k = floor(t);
            let f = sub(t, k);
            let two_to_f = fmadd(f, polynomial(f, &EXP2_POLY), splat(1.0));
            times_two_to_the(two_to_f, k)
        }

        /// Lane-wise ln(1 + e^x), as described in [`approx`](crate::scan::kernel::approx).
        #[inline]
        #[target_feature(enable = $feature)]
        fn softplus(x: Vector) -> Vector {
            let e = exp_below_max(minus_abs(x));
            let s = div(e, add(splat(2.0), e));
            let log1p_e = mul(s, polynomial(mul(s, s), &LOG1P_POLY));
            add(max(x, splat(0.0)), log1p_e)
        }

        /// The sum of `coefficients[i] * x^i`, in Horner form.
        #[inline]
        #[target_feature(enable = $feature)]
        fn polynomial(x: Vector, coefficients: &[f32]) -> Vector {
            let (&highest, lower) = coefficients
                .split_last()
                .expect("a polynomial has coefficients");
            lower
                .iter()
                .rev()
                .fold(splat(highest), |acc, &c| fmadd(acc, x, splat(c)))
        }
    };
}
use lane_math;
