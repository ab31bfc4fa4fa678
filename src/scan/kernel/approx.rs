//! The vector `exp` and `softplus` shared by the SIMD kernels: their
//! algorithms, constants and accuracy checks. Each architecture file writes
//! the same steps with its own intrinsics; every step is an IEEE operation
//! (fused multiply-add included), so both produce bit-identical results.
//!
//! # exp(x)
//!
//! 1. Clamp x to [[`EXP_ARG_MIN`], [`EXP_ARG_MAX`]] (NaN passes through).
//! 2. Cody-Waite range reduction with k = floor(x log2 e):
//!    r = (x - k ln2_hi) - k ln2_lo, in [0, ln 2], each step one fused
//!    multiply-add; the first is exact for |x| >= 1, so r is rounded once.
//! 3. 2^k, built by adding k into the exponent field of 1.0 (whose field
//!    holds 127): the same integer add as the decay's step 4.
//! 4. e^x = 2^k + (2^k r) P(r), P of degree 5 ([`EXP_POLY`]) in Horner form,
//!    the last step one fused multiply-add. Scaling by 2^k is exact wherever
//!    the result is a normal number, so this is 2^k (1 + r P(r)) rounded once
//!    (the same bits), with no constant 1 to copy into the addend that NEON's
//!    multiply-add overwrites: one instruction fewer per register.
//!
//! k lies in [-127, 128]: k = -127 gives an all-zero exponent field, the
//! number 0, which flushes the subnormal results (x < ln `f32::MIN_POSITIVE`,
//! about -87.34); k = 128 gives +inf, exactly for x > ln `f32::MAX`, about
//! 88.72. Flooring rather than rounding k is what keeps every finite result
//! within those 254 exponents, with no special case.
//!
//! Error: relative error at most 1.1e-7 for x in [-87.33, 88.72] (checked
//! once over every f32 there: 1.03e-7, at x = -0.0325); below, the true value
//! is under `f32::MIN_POSITIVE` and the result is 0 or within
//! `f32::MIN_POSITIVE` of it; +inf above; exp(0) = exp(-0) = 1 exactly; NaN
//! in, NaN out.
//!
//! # decay(t) = 2^t, for t <= 0
//!
//! The scan's decay e^(dt A) of a trained model, where dt >= 0 and A <= 0,
//! computed as 2^t with t = dt (A log2 e), A log2 e rounded once per state
//! before the steps: the exp's range reduction then needs no multiply and no
//! Cody-Waite steps.
//!
//! 1. Clamp t to at least [`DECAY_ARG_MIN`] = -126 (NaN passes through).
//! 2. k = floor(t), f = t - k in [0, 1]; the subtraction is exact for
//!    t <= -1 (Sterbenz) and rounds once for t in (-1, 0).
//! 3. 2^f = 1 + f Q(f), Q of degree 4 ([`EXP2_POLY`]) in Horner form, the
//!    last step one fused multiply-add onto 1.
//! 4. 2^k 2^f by adding k to 2^f's exponent field: exact, since every result
//!    is a normal number (2^f is in [1, 2], k in [-126, 0]).
//!
//! Error against 2^t: relative error at most 2.5e-7 for t in [-126, 0]
//! (checked once over every f32 there: 1.65e-7, at t = -0.2686); below,
//! the result is `f32::MIN_POSITIVE`, within `f32::MIN_POSITIVE` of the true
//! value; decay(0) = decay(-0) = 1 exactly; NaN in, NaN out. Against
//! e^(dt A), the two roundings of t (A log2 e, then dt times it) add a
//! relative error of up to |t| 2^-24 ln 2 each: 1e-6 in all at t = -12
//! (e^(dt A) = 2.4e-4), 2e-6 at t = -24 (6e-8); in absolute terms they never
//! add more than 4.4e-8 (at t = -1/ln 2, where 2^t |t| peaks).
//!
//! # softplus(x) = ln(1 + e^x)
//!
//! Computed as max(x, 0) + log1p(e) with e = exp(-|x|) in [0, 1], which never
//! overflows and keeps full relative accuracy for very negative x (where the
//! result is about e^x). For e in [0, 1], log1p(e) = 2 atanh(s) with
//! s = e / (2 + e) in [0, 1/3], and 2 atanh(s) = s Q(s^2), Q of degree 4
//! ([`LOG1P_POLY`]). Above x = 15 the log1p term is under half an ulp of x, so
//! the result is x, matching the reference's threshold of 20.
//!
//! Error: relative error at most 3e-7 wherever the result is at least
//! `f32::MIN_POSITIVE` (checked once over every f32 from -87.3 up: 2.8e-7,
//! at x = -4.8); below that it is 0 or within `f32::MIN_POSITIVE`.
//!
//! The sweeps in `checks` below assert these bounds on 3 million points per
//! function, edge cases included, on each architecture.
//!
//! The polynomials are minimax fits of the relative error (Remez exchange in
//! 40-digit arithmetic), rounded to f32: exp's P to 1.3e-8 (2.0e-9 before
//! rounding), log1p's Q to 7.8e-9, both well under f32's half ulp, so the
//! error bounds above come from f32 rounding in the evaluation. The decay's
//! Q (Remez exchange in f64) fits to 9.4e-8 (8.2e-8 before rounding): one
//! degree fewer than exp's, one multiply-add fewer per state update, for a
//! bound twice exp's.

/// exp's inputs are clamped to at least this: it floors to k = -127, whose
/// scale 2^k is built as 0.
pub(super) const EXP_ARG_MIN: f32 = -88.0;
/// exp's inputs are clamped to at most this: it floors to k = 128, whose
/// scale 2^k is built as +inf.
pub(super) const EXP_ARG_MAX: f32 = 89.0;
/// log2 e, to find k.
pub(super) const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 rounded to f32, the first Cody-Waite constant.
pub(super) const LN_2_HI: f32 = std::f32::consts::LN_2;
/// ln 2 - [`LN_2_HI`], the second Cody-Waite constant.
pub(super) const LN_2_LO: f32 = -1.904_654_2e-9;
/// Coefficients of P, lowest degree first: exp(r) = 1 + r P(r) on [0, ln 2].
pub(super) const EXP_POLY: [f32; 6] = [
    0.999_999_8,
    0.500_005_84,
    0.166_610_14,
    0.041_914_992,
    0.007_792_272_6,
    0.001_948_77,
];
/// The decay's inputs are clamped to at least this, so that every result
/// is a normal number.
pub(super) const DECAY_ARG_MIN: f32 = -126.0;
/// Coefficients of Q, lowest degree first: 2^f = 1 + f Q(f) on [0, 1].
pub(super) const EXP2_POLY: [f32; 5] = [
    0.693_151_3,
    0.240_164_44,
    0.055_799_913,
    0.009_017_031,
    0.001_867_13,
];
/// Coefficients of Q, lowest degree first: log1p(e) = s Q(s^2) with
/// s = e / (2 + e), for e in [0, 1].
pub(super) const LOG1P_POLY: [f32; 5] = [2.0, 0.666_663_17, 0.400_249_1, 0.279_606, 0.281_783_34];

/// Accuracy sweeps each architecture runs on its own vector functions,
/// passed in as functions over 8 lanes.
#[cfg(test)]
pub(super) mod checks {
    /// The vector exp's error bound, stated above.
    const EXP_MAX_REL_ERROR: f64 = 1.1e-7;
    /// The vector decay's error bound against 2^t, stated above.
    const DECAY_MAX_REL_ERROR: f64 = 2.5e-7;
    /// The vector softplus's error bound, stated above.
    const SOFTPLUS_MAX_REL_ERROR: f64 = 3e-7;

    /// A vector function applied to 8 lanes.
    pub(in crate::scan::kernel) type Lanes8 = dyn Fn([f32; 8]) -> [f32; 8];

    /// Every 4099th f32 bit pattern (so every sign, exponent and class: zeros,
    /// subnormals, infinities, NaNs) and 2^21 evenly spaced points over
    /// [from, to].
    fn sweep(from: f32, to: f32) -> Vec<f32> {
        let patterns = (0..=u32::MAX).step_by(4099).map(f32::from_bits);
        let steps = 1 << 21;
        let dense = (0..=steps).map(|i| from + (to - from) * (i as f32 / steps as f32));
        patterns.chain(dense).collect()
    }

    /// `f` on every x of `xs`, 8 at a time (the last group padded with 0).
    fn apply(f: &Lanes8, xs: &[f32]) -> Vec<f32> {
        xs.chunks(8)
            .flat_map(|chunk| {
                let mut lanes = [0.0; 8];
                lanes[..chunk.len()].copy_from_slice(chunk);
                f(lanes).into_iter().take(chunk.len())
            })
            .collect()
    }

    /// Compares `f` against the f64 `exact` on `xs` and returns the largest
    /// relative error among results of at least `f32::MIN_POSITIVE`; smaller
    /// ones must be within `f32::MIN_POSITIVE`, overflows must be +inf, NaN
    /// must give NaN.
    fn max_rel_error(f: &Lanes8, exact: fn(f64) -> f64, xs: &[f32]) -> f64 {
        let mut worst: f64 = 0.0;
        for (&x, &got) in xs.iter().zip(&apply(f, xs)) {
            let want = exact(f64::from(x));
            if x.is_nan() {
                assert!(got.is_nan(), "f({x}) = {got}, want NaN");
            } else if (want as f32).is_infinite() {
                assert_eq!(got, f32::INFINITY, "f({x}) should overflow");
            } else if want < f64::from(f32::MIN_POSITIVE) {
                let error = (f64::from(got) - want).abs();
                assert!(
                    error <= f64::from(f32::MIN_POSITIVE),
                    "f({x}) = {got}, want {want}"
                );
            } else {
                let error = (f64::from(got) - want).abs() / want;
                assert!(error.is_finite(), "f({x}) = {got}, want {want}");
                worst = worst.max(error);
            }
        }
        worst
    }

    /// Checks that `exp_below_max`, an exp without the clamp from above,
    /// gives `exp`'s bits wherever that clamp leaves x as it is: every x up
    /// to `EXP_ARG_MAX` (the decay's dt A <= 0 and softplus's -|x|
    /// included), -inf and NaN.
    pub(in crate::scan::kernel) fn check_exp_below_max(exp: &Lanes8, exp_below_max: &Lanes8) {
        let xs: Vec<f32> = sweep(-110.0, super::EXP_ARG_MAX)
            .into_iter()
            .filter(|x| x.is_nan() || *x <= super::EXP_ARG_MAX)
            .chain([super::EXP_ARG_MAX, f32::NEG_INFINITY, -0.0])
            .collect();
        assert!(xs.len() > 1 << 21, "the sweep covers the range");
        for (at, (got, want)) in apply(exp_below_max, &xs)
            .iter()
            .zip(apply(exp, &xs))
            .enumerate()
        {
            assert_eq!(got.to_bits(), want.to_bits(), "x = {}", xs[at]);
        }
    }

    /// Checks a vector exp against f64 over its whole range and edge cases.
    pub(in crate::scan::kernel) fn check_exp(exp: &Lanes8) {
        let edges = [
            0.0,
            -0.0,
            -87.336,
            -87.337,
            -88.0,
            -104.0,
            -1e30,
            f32::NEG_INFINITY,
        ];
        let got = exp(edges);
        assert_eq!(got[..2], [1.0, 1.0], "exp(0) and exp(-0) must be exactly 1");
        assert!(
            got[2] >= f32::MIN_POSITIVE,
            "exp(-87.336) = {} is normal",
            got[2]
        );
        assert_eq!(got[3..], [0.0; 5], "subnormal results are flushed to 0");
        let big = [
            88.72,
            88.722_83,
            88.722_84,
            89.0,
            100.0,
            1e30,
            f32::INFINITY,
            f32::NAN,
        ];
        let got = exp(big);
        assert!(
            got[..2].iter().all(|v| v.is_finite()),
            "exp near ln(f32::MAX): {got:?}"
        );
        assert!(
            got[2..7].iter().all(|&v| v == f32::INFINITY),
            "exp overflows: {got:?}"
        );
        assert!(got[7].is_nan(), "exp(NaN) = {}", got[7]);

        let worst = max_rel_error(exp, f64::exp, &sweep(-88.0, 89.0));
        println!("vector exp: max relative error {worst:.3e}");
        assert!(
            worst <= EXP_MAX_REL_ERROR,
            "exp error {worst:e} > {EXP_MAX_REL_ERROR:e}"
        );
    }

    /// Checks a vector decay against 2^t in f64 over its whole range and
    /// edge cases.
    pub(in crate::scan::kernel) fn check_decay(decay: &Lanes8) {
        let got = decay([
            0.0,
            -0.0,
            -1.0,
            -126.0,
            -126.5,
            -1e30,
            f32::NEG_INFINITY,
            f32::NAN,
        ]);
        assert_eq!(got[..3], [1.0, 1.0, 0.5], "decay at 0, -0 and -1");
        assert!(
            got[3..7].iter().all(|&v| v == f32::MIN_POSITIVE),
            "decay at and below the clamp: {got:?}"
        );
        assert!(got[7].is_nan(), "decay(NaN) = {}", got[7]);

        let xs: Vec<f32> = sweep(-130.0, 0.0)
            .into_iter()
            .filter(|x| x.is_nan() || *x <= 0.0)
            .collect();
        let worst = max_rel_error(decay, f64::exp2, &xs);
        println!("vector decay: max relative error {worst:.3e}");
        let bound = DECAY_MAX_REL_ERROR;
        assert!(worst <= bound, "decay error {worst:e} > {bound:e}");
    }

    /// Checks a vector softplus against f64 over its whole range.
    pub(in crate::scan::kernel) fn check_softplus(softplus: &Lanes8) {
        let exact = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
        let got = softplus([
            20.0,
            1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -200.0,
            0.0,
            0.0,
            0.0,
        ]);
        assert_eq!(
            got[..5],
            [20.0, 1e30, f32::INFINITY, 0.0, 0.0],
            "softplus at the extremes"
        );
        assert!(softplus([f32::NAN; 8])[0].is_nan(), "softplus(NaN) is NaN");

        let worst = max_rel_error(softplus, exact, &sweep(-100.0, 100.0));
        println!("vector softplus: max relative error {worst:.3e}");
        let bound = SOFTPLUS_MAX_REL_ERROR;
        assert!(worst <= bound, "softplus error {worst:e} > {bound:e}");
    }
}
