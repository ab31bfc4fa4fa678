//! The AVX-512F kernels, of both tilings.
//!
//! Row pixels: 8 output channels x 32 consecutive pixels of the plane, its
//! rows end to end (two registers), accumulated in 16 registers; each input
//! vector, loaded once per tap, meets the 8 channels' weights as broadcasts.
//! The image borders are masked lanes, read as the zero padding: per row of
//! taps, three pairs of masks that stay in mask registers over the channels.
//!
//! Output channels: 16 output channels in a register x a tile of 14 pixels
//! accumulated in 14 registers; each input value of the zero-padded copy is
//! broadcast straight from memory into the multiply-add with the tap's 16
//! weights, and the finished tile is scattered to the 16 output planes.
//!
//! SiLU: 16 values a step, `exp` from a power of two and a polynomial.

use super::super::{
    tile_starts, Channels, Kernel, OutputTiles, Tiling, CHANNELS_LAST_TILE, LAST_TO_FIRST_TILE,
};
use std::arch::x86_64::*;

/// f32 lanes of a register.
const LANES: usize = 16;

/// [`Tiling::RowPixels`]' output channel block.
const BLOCK: usize = 8;

/// The kernels, if this CPU supports AVX-512F.
pub(super) fn detect() -> Option<Kernel> {
    is_x86_feature_detected!("avx512f").then_some(Kernel {
        name: "avx512f",
        row_pixels: Some(row_pixels),
        output_channel_tiles: &[(1, 14), (2, 7), (4, 3)],
        first_blocks_per_task: 1,
        output_channels,
        pointwise_first,
        pointwise_last,
        pointwise_last_to_first,
        silu,
    })
}

fn row_pixels(
    input: &[f32],
    dims: (usize, usize, usize),
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    debug_assert_eq!(Tiling::RowPixels.block(), BLOCK);
    // SAFETY: `detect` hands this function out only on CPUs with AVX-512F.
    unsafe { row_pixels_avx512(input, dims, weights, bias, output) }
}

/// Lanes `i` of a register whose pixel `start + i` lies in `0..len`.
fn lane_mask(start: isize, len: usize) -> __mmask16 {
    (0..LANES as isize)
        .filter(|i| (0..len as isize).contains(&(start + i)))
        .fold(0, |mask, i| mask | (1 << i))
}

/// For the 32 pixels `p0..p0 + 32` of a `height` x `width` plane, rows end
/// to end, the lanes whose tap `(ky, kx)` reads inside the plane, as two
/// masks; tap (1, 1)'s are the pixels inside the plane.
fn tap_masks(p0: usize, (height, width): (usize, usize)) -> [[[__mmask16; 2]; 3]; 3] {
    const PIXELS: usize = 2 * LANES;
    let plane = height * width;
    // Lanes i with p0 + i in from..to.
    let lanes = |from: usize, to: usize| {
        let (lo, hi) = (
            from.saturating_sub(p0).min(PIXELS),
            to.saturating_sub(p0).min(PIXELS),
        );
        ((1u64 << hi) - (1u64 << lo)) as u32
    };
    // Lanes at column `column` of their row.
    let at_column = |column: usize| {
        let mut lanes = 0u32;
        let mut i = (width + column - p0 % width) % width;
        while i < PIXELS {
            lanes |= 1 << i;
            i += width;
        }
        lanes
    };
    let inside = lanes(0, plane);
    let rows = [
        inside & !lanes(0, width),
        inside,
        inside & !lanes(plane - width, plane),
    ];
    let columns = [!at_column(0), u32::MAX, !at_column(width - 1)];
    std::array::from_fn(|ky| {
        std::array::from_fn(|kx| {
            let both = rows[ky] & columns[kx];
            [both as __mmask16, (both >> LANES) as __mmask16]
        })
    })
}

#[target_feature(enable = "avx512f")]
fn row_pixels_avx512(
    input: &[f32],
    (channels, height, width): (usize, usize, usize),
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    assert!(input.len() >= channels * height * width && weights.len() >= channels * 9 * BLOCK);
    assert!(bias.len() >= BLOCK && output.len() >= BLOCK * height * width);
    let plane = height * width;
    for p0 in (0..plane).step_by(2 * LANES) {
        let masks = tap_masks(p0, (height, width));
        let mut acc: [[__m512; 2]; BLOCK] = std::array::from_fn(|o| [_mm512_set1_ps(bias[o]); 2]);
        for (ky, masks) in masks.iter().enumerate() {
            for c in 0..channels {
                let row = input[c * plane..]
                    .as_ptr()
                    .wrapping_add(p0 + ky * width)
                    .wrapping_sub(width + 1);
                let taps = &weights[(c * 9 + ky * 3) * BLOCK..][..3 * BLOCK];
                for (kx, (mask, taps)) in masks.iter().zip(taps.chunks_exact(BLOCK)).enumerate() {
                    // Pixel p0 + (ky - 1) width + kx - 1 may lie outside the
                    // plane (and the slice): only masked-in lanes are read.
                    let at = row.wrapping_add(kx);
                    // SAFETY: AVX-512 masked loads touch only the lanes of
                    // the mask, here pixels inside this channel's plane.
                    let v = unsafe {
                        [
                            _mm512_maskz_loadu_ps(mask[0], at),
                            _mm512_maskz_loadu_ps(mask[1], at.wrapping_add(LANES)),
                        ]
                    };
                    for (acc, &w) in acc.iter_mut().zip(taps) {
                        let w = _mm512_set1_ps(w);
                        acc[0] = _mm512_fmadd_ps(w, v[0], acc[0]);
                        acc[1] = _mm512_fmadd_ps(w, v[1], acc[1]);
                    }
                }
            }
        }
        let stored = masks[1][1];
        for (o, acc) in acc.iter().enumerate() {
            let at = output[o * plane + p0..].as_mut_ptr();
            // SAFETY: the store masks keep to pixels p0.. of this plane.
            unsafe {
                _mm512_mask_storeu_ps(at, stored[0], acc[0]);
                _mm512_mask_storeu_ps(at.wrapping_add(LANES), stored[1], acc[1]);
            }
        }
    }
}

fn output_channels(
    padded: &[f32],
    padded_dims: (usize, usize, usize),
    tiles: OutputTiles,
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    debug_assert_eq!(Tiling::OutputChannels.block(), LANES);
    let run = match (tiles.stride, tiles.tile) {
        (1, (1, 14)) => output_channels_avx512::<1, 1, 14>,
        (2, (1, 14)) => output_channels_avx512::<2, 1, 14>,
        (1, (2, 7)) => output_channels_avx512::<1, 2, 7>,
        (2, (2, 7)) => output_channels_avx512::<2, 2, 7>,
        (1, (4, 3)) => output_channels_avx512::<1, 4, 3>,
        (2, (4, 3)) => output_channels_avx512::<2, 4, 3>,
        _ => panic!("no output-channel kernel for {tiles:?}"),
    };
    // SAFETY: `detect` hands this function out only on CPUs with AVX-512F.
    unsafe { run(padded, padded_dims, tiles.out, weights, bias, output) }
}

/// 16 output channels at stride `S`, in tiles of `R` rows x `N` columns.
#[target_feature(enable = "avx512f")]
fn output_channels_avx512<const S: usize, const R: usize, const N: usize>(
    padded: &[f32],
    (channels, padded_height, padded_width): (usize, usize, usize),
    (height, width): (usize, usize),
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    let padded_plane = padded_height * padded_width;
    let plane = height * width;
    assert!(
        height >= R && width >= N,
        "the tile is larger than the output"
    );
    // Every tap of every output pixel lies inside the padded planes.
    assert!((height - 1) * S + 2 < padded_height && (width - 1) * S + 2 < padded_width);
    assert!(padded.len() >= channels * padded_plane && weights.len() >= channels * 9 * LANES);
    assert!(bias.len() >= LANES && output.len() >= LANES * plane);
    assert!(LANES * plane <= i32::MAX as usize);
    // SAFETY: `bias` holds at least LANES values (asserted).
    let bias = unsafe { _mm512_loadu_ps(bias.as_ptr()) };
    // Offsets of the 16 output channels' planes, for the scatter.
    let planes = _mm512_mullo_epi32(
        _mm512_set1_epi32(plane as i32),
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
    );
    for y0 in tile_starts(height, R) {
        for x0 in tile_starts(width, N) {
            let mut acc = [[bias; N]; R];
            for c in 0..channels {
                for ky in 0..3 {
                    let rows: [*const f32; R] = std::array::from_fn(|r| {
                        let row = (y0 + r) * S + ky;
                        padded[c * padded_plane + row * padded_width + x0 * S..].as_ptr()
                    });
                    let taps = &weights[(c * 9 + ky * 3) * LANES..][..3 * LANES];
                    for (kx, taps) in taps.chunks_exact(LANES).enumerate() {
                        // SAFETY: a chunk holds LANES weights.
                        let w = unsafe { _mm512_loadu_ps(taps.as_ptr()) };
                        for (row, acc) in rows.iter().zip(&mut acc) {
                            for (n, acc) in acc.iter_mut().enumerate() {
                                // SAFETY: column (x0 + n) S + kx of this row lies
                                // inside its padded plane (asserted above: x0 + n
                                // is an output column).
                                let v = unsafe { *row.add(n * S + kx) };
                                *acc = _mm512_fmadd_ps(_mm512_set1_ps(v), w, *acc);
                            }
                        }
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (n, acc) in acc.iter().enumerate() {
                    let at = output[(y0 + r) * width + x0 + n..].as_mut_ptr();
                    // SAFETY: lane j writes output channel j's plane, at most
                    // (LANES - 1) planes past `at`, inside `output` (asserted).
                    unsafe { _mm512_i32scatter_ps::<4>(at.cast(), planes, *acc) };
                }
            }
        }
    }
}

fn pointwise_first(
    input: &[&[f32]],
    pixels: usize,
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    // SAFETY: `detect` hands this function out only on CPUs with AVX-512F.
    unsafe { pointwise_first_avx512(input, pixels, weights, bias, output) }
}

/// 8 output channels x 32 pixels (two registers) in 16 accumulators; each
/// input vector, loaded once, meets the 8 channels' weights as broadcasts.
#[target_feature(enable = "avx512f")]
fn pointwise_first_avx512(
    input: &[&[f32]],
    pixels: usize,
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    const B: usize = 8;
    debug_assert_eq!(Channels::First.block(), B);
    let channels: usize = input.iter().map(|part| part.len() / pixels).sum();
    assert!(weights.len() >= channels * B);
    assert!(bias.len() >= B && output.len() >= B * pixels);
    for p0 in (0..pixels).step_by(2 * LANES) {
        let masks = [
            lane_mask(p0 as isize, pixels),
            lane_mask((p0 + LANES) as isize, pixels),
        ];
        let mut acc: [[__m512; 2]; B] = std::array::from_fn(|o| [_mm512_set1_ps(bias[o]); 2]);
        let rows = input.iter().flat_map(|part| part.chunks_exact(pixels));
        for (row, taps) in rows.zip(weights.chunks_exact(B)) {
            let at = row[p0..].as_ptr();
            // SAFETY: the masks keep to pixels p0.. of this channel's row.
            let v = unsafe {
                [
                    _mm512_maskz_loadu_ps(masks[0], at),
                    _mm512_maskz_loadu_ps(masks[1], at.wrapping_add(LANES)),
                ]
            };
            for (acc, &w) in acc.iter_mut().zip(taps) {
                let w = _mm512_set1_ps(w);
                acc[0] = _mm512_fmadd_ps(w, v[0], acc[0]);
                acc[1] = _mm512_fmadd_ps(w, v[1], acc[1]);
            }
        }
        for (o, acc) in acc.iter().enumerate() {
            let at = output[o * pixels + p0..].as_mut_ptr();
            // SAFETY: the masks keep to pixels p0.. of this channel's row.
            unsafe {
                _mm512_mask_storeu_ps(at, masks[0], acc[0]);
                _mm512_mask_storeu_ps(at.wrapping_add(LANES), masks[1], acc[1]);
            }
        }
    }
}

fn pointwise_last(
    input: &[f32],
    dims: (usize, usize),
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    // SAFETY: `detect` hands this function out only on CPUs with AVX-512F.
    unsafe { pointwise_last_avx512(input, dims, weights, bias, output) }
}

/// 32 output channels (two registers) x 7 pixels in 14 accumulators; each
/// input value, broadcast from memory, meets two registers of weights.
#[target_feature(enable = "avx512f")]
fn pointwise_last_avx512(
    input: &[f32],
    (channels, pixels): (usize, usize),
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    const B: usize = 2 * LANES;
    const N: usize = CHANNELS_LAST_TILE;
    debug_assert_eq!(Channels::Last.block(), B);
    let outputs = bias.len();
    assert!(pixels >= N && outputs.is_multiple_of(B));
    assert!(input.len() >= pixels * channels && weights.len() >= outputs * channels);
    assert!(output.len() >= pixels * outputs);
    for p0 in tile_starts(pixels, N) {
        let rows: [&[f32]; N] = std::array::from_fn(|n| &input[(p0 + n) * channels..][..channels]);
        let blocks = weights.chunks_exact(channels * B).zip(bias.chunks_exact(B));
        for (block, (weights, bias)) in blocks.enumerate() {
            // SAFETY: a bias chunk holds B = 2 LANES values.
            let bias = unsafe {
                [
                    _mm512_loadu_ps(bias.as_ptr()),
                    _mm512_loadu_ps(bias[LANES..].as_ptr()),
                ]
            };
            let mut acc = [bias; N];
            for (c, w) in weights.chunks_exact(B).enumerate() {
                // SAFETY: a weight chunk holds B = 2 LANES values.
                let w = unsafe {
                    [
                        _mm512_loadu_ps(w.as_ptr()),
                        _mm512_loadu_ps(w[LANES..].as_ptr()),
                    ]
                };
                for (acc, row) in acc.iter_mut().zip(&rows) {
                    // SAFETY: c < channels, the length of every row.
                    let x = _mm512_set1_ps(unsafe { *row.get_unchecked(c) });
                    acc[0] = _mm512_fmadd_ps(x, w[0], acc[0]);
                    acc[1] = _mm512_fmadd_ps(x, w[1], acc[1]);
                }
            }
            for (n, acc) in acc.iter().enumerate() {
                let at = output[(p0 + n) * outputs + block * B..][..B].as_mut_ptr();
                // SAFETY: the slice holds B = 2 LANES values.
                unsafe {
                    _mm512_storeu_ps(at, acc[0]);
                    _mm512_storeu_ps(at.add(LANES), acc[1]);
                }
            }
        }
    }
}

fn pointwise_last_to_first(
    input: &[f32],
    dims: (usize, usize),
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    // SAFETY: `detect` hands this function out only on CPUs with AVX-512F.
    unsafe { pointwise_last_to_first_avx512(input, dims, weights, bias, output) }
}

/// 16 output channels (a register) x 14 pixels in 14 accumulators; each
/// input value, broadcast from memory, meets the register of weights, and
/// the finished tile is scattered to the 16 output rows.
#[target_feature(enable = "avx512f")]
fn pointwise_last_to_first_avx512(
    input: &[f32],
    (channels, pixels): (usize, usize),
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    const N: usize = LAST_TO_FIRST_TILE;
    debug_assert_eq!(Channels::LastToFirst.block(), LANES);
    assert!(pixels >= N);
    assert!(input.len() >= pixels * channels && weights.len() >= channels * LANES);
    assert!(bias.len() >= LANES && output.len() >= LANES * pixels);
    assert!(LANES * pixels <= i32::MAX as usize);
    // SAFETY: `bias` holds at least LANES values (asserted).
    let bias = unsafe { _mm512_loadu_ps(bias.as_ptr()) };
    // Offsets of the 16 output channels' rows, for the scatter.
    let rows_out = _mm512_mullo_epi32(
        _mm512_set1_epi32(pixels as i32),
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
    );
    for p0 in tile_starts(pixels, N) {
        let rows: [&[f32]; N] = std::array::from_fn(|n| &input[(p0 + n) * channels..][..channels]);
        let mut acc = [bias; N];
        for (c, w) in weights.chunks_exact(LANES).take(channels).enumerate() {
            // SAFETY: a weight chunk holds LANES values.
            let w = unsafe { _mm512_loadu_ps(w.as_ptr()) };
            for (acc, row) in acc.iter_mut().zip(&rows) {
                // SAFETY: c < channels, the length of every row.
                let x = _mm512_set1_ps(unsafe { *row.get_unchecked(c) });
                *acc = _mm512_fmadd_ps(x, w, *acc);
            }
        }
        for (n, acc) in acc.iter().enumerate() {
            let at = output[p0 + n..].as_mut_ptr();
            // SAFETY: lane j writes output channel j's row, at most
            // (LANES - 1) rows past `at`, inside `output` (asserted).
            unsafe { _mm512_i32scatter_ps::<4>(at.cast(), rows_out, *acc) };
        }
    }
}

fn silu(values: &mut [f32]) {
    // SAFETY: `detect` hands this function out only on CPUs with AVX-512F.
    unsafe { silu_avx512(values) }
}

#[target_feature(enable = "avx512f")]
fn silu_avx512(values: &mut [f32]) {
    let (blocks, tail) = values.as_chunks_mut::<LANES>();
    for block in blocks {
        // SAFETY: a block holds LANES values.
        unsafe {
            let x = _mm512_loadu_ps(block.as_ptr());
            _mm512_storeu_ps(block.as_mut_ptr(), silu_lanes(x));
        }
    }
    let mask: __mmask16 = (1 << tail.len()) - 1;
    // SAFETY: the mask keeps to the tail's fewer than LANES values.
    unsafe {
        let x = _mm512_maskz_loadu_ps(mask, tail.as_ptr());
        _mm512_mask_storeu_ps(tail.as_mut_ptr(), mask, silu_lanes(x));
    }
}

/// `x / (1 + exp(-x))` lane by lane. `exp(y)` is `2^n exp(r)` with `n` the
/// integer nearest `y / ln 2` and `|r| <= ln 2 / 2`, `exp(r)` its Taylor
/// series to degree 6 (relative error under 2e-7). `y = -x` is clamped to
/// +-100 first: past that `exp(y)` is 0 or overflows to infinity, and the
/// quotient is `x` or -0 either way; NaN stays NaN.
#[target_feature(enable = "avx512f")]
fn silu_lanes(x: __m512) -> __m512 {
    const LN2_HIGH: f32 = 0.693_359_4; // ln 2 to 11 bits: n * LN2_HIGH is exact
    const LN2_LOW: f32 = -2.121_944_4e-4; // ln 2 - LN2_HIGH
    const TAYLOR: [f32; 7] = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let y = _mm512_sub_ps(_mm512_setzero_ps(), x);
    let y = _mm512_min_ps(
        _mm512_max_ps(y, _mm512_set1_ps(-100.0)),
        _mm512_set1_ps(100.0),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(y, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HIGH), y);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LOW), r);
    let exp_r = TAYLOR[1..].iter().fold(_mm512_set1_ps(TAYLOR[0]), |p, &c| {
        _mm512_fmadd_ps(p, r, _mm512_set1_ps(c))
    });
    let exp_y = _mm512_scalef_ps(exp_r, n);
    _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), exp_y))
}
