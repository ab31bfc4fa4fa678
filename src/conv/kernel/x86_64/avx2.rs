//! The AVX2+FMA kernels, for x86_64 CPUs without AVX-512F.
//!
//! They keep the shared blocks and weight order (16, 8 or 32 output
//! channels a block) but tile the registers their own way, because AVX2 has
//! 16 registers of 8 lanes and no scatter: 12 sums in flight (two FMA pipes
//! of 4 cycles' latency need 8), the other registers for operands, and no
//! masked loads in the inner loops. (The AVX-512 tiles at half width, 8 sums
//! and masked loads, ran the network 1.24x slower than tract's im2col and
//! matrix product: docs/performance.md.)
//!
//! - 3x3 output channels (every 3x3 layer: there is no row-pixel kernel
//!   here), pointwise channels-last and last-to-first: a [`Tile`] of 16
//!   output channels in two registers x 6 pixels; each input value,
//!   broadcast, meets the two registers of weights. The 3x3 kernel takes 16
//!   input channels at a time over the nine taps, so that their weights and
//!   rows stay in L1. Channel-first outputs leave through a small transpose
//!   buffer.
//! - Pointwise channels-first: 4 output channels x 24 pixels in three
//!   registers, for up to 4 blocks of 8 a thread task over each strip of 24
//!   pixels before the next; each input vector, loaded once a pass, meets 4
//!   broadcast weights. Fewer than 24 pixels go through a zero-padded copy.
//! - SiLU: 8 values a step, with the scan kernel's `exp`.

use super::super::{tile_starts, Channels, Kernel, OutputTiles, Tiling};
use crate::scan::kernel::exp_avx2;
use std::arch::x86_64::*;

/// f32 lanes of a register.
const LANES: usize = 8;

/// Output channels of a [`Tile`]: two registers.
const TILE_CHANNELS: usize = 2 * LANES;

/// Pixels of a [`Tile`].
const TILE_PIXELS: usize = 6;

/// Input channels a 3x3 tile takes at a time over its nine taps: their
/// weights (9 KB) and input rows stay in L1 meanwhile.
const CHANNELS_IN_L1: usize = 16;

/// Pixels the channels-first pointwise kernel computes together: three
/// registers.
const FIRST_PIXELS: usize = 3 * LANES;

/// Output channels the channels-first pointwise kernel computes together.
const FIRST_CHANNELS: usize = 4;

/// The kernels, if this CPU supports AVX2 and FMA.
pub(super) fn detect() -> Option<Kernel> {
    let supported = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    supported.then_some(Kernel {
        name: "avx2+fma",
        row_pixels: None,
        output_channel_tiles: &[(1, 6), (2, 3), (3, 2)],
        first_blocks_per_task: 4,
        output_channels,
        pointwise_first,
        pointwise_last,
        pointwise_last_to_first,
        silu,
    })
}

/// The sums of 16 output channels (two registers) at 6 pixels.
struct Tile([[__m256; 2]; TILE_PIXELS]);

impl Tile {
    /// Every pixel's sums set to the 16 channels' `bias`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn new(bias: &[f32]) -> Tile {
        let bias = &bias[..TILE_CHANNELS];
        // SAFETY: `bias` holds 2 LANES values.
        let bias = unsafe {
            [
                _mm256_loadu_ps(bias.as_ptr()),
                _mm256_loadu_ps(bias[LANES..].as_ptr()),
            ]
        };
        Tile([bias; TILE_PIXELS])
    }

    /// Adds `*pixels[n].add(offset)` times the 16 `weights` to pixel `n`'s
    /// sums.
    ///
    /// # Safety
    /// `pixels[n].add(offset)` must be readable for every `n`, and
    /// `weights` must point to 16 readable values.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn multiply_add(
        &mut self,
        pixels: &[*const f32; TILE_PIXELS],
        offset: usize,
        weights: *const f32,
    ) {
        // SAFETY: the caller vouches for the 16 weights.
        let w = unsafe {
            [
                _mm256_loadu_ps(weights),
                _mm256_loadu_ps(weights.add(LANES)),
            ]
        };
        for (sums, pixel) in self.0.iter_mut().zip(pixels) {
            // SAFETY: the caller vouches for the pixel's value.
            let x = unsafe { _mm256_broadcast_ss(&*pixel.add(offset)) };
            sums[0] = _mm256_fmadd_ps(x, w[0], sums[0]);
            sums[1] = _mm256_fmadd_ps(x, w[1], sums[1]);
        }
    }

    /// Writes pixel `n`'s 16 sums to `output[starts[n]..][..16]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn store_channels_last(&self, output: &mut [f32], starts: [usize; TILE_PIXELS]) {
        for (sums, start) in self.0.iter().zip(starts) {
            let at = output[start..][..TILE_CHANNELS].as_mut_ptr();
            // SAFETY: the slice holds 2 LANES values.
            unsafe {
                _mm256_storeu_ps(at, sums[0]);
                _mm256_storeu_ps(at.add(LANES), sums[1]);
            }
        }
    }

    /// Writes output channel `o`'s sum at pixel `n` to `output[o * plane +
    /// at[n]]`: the tile transposed into 16 channel-first planes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn store_channels_first(&self, output: &mut [f32], plane: usize, at: [usize; TILE_PIXELS]) {
        let mut by_pixel = [0.0; TILE_PIXELS * TILE_CHANNELS];
        self.store_channels_last(&mut by_pixel, std::array::from_fn(|n| n * TILE_CHANNELS));
        let planes = output.chunks_exact_mut(plane).take(TILE_CHANNELS);
        for (o, plane) in planes.enumerate() {
            for (n, &at) in at.iter().enumerate() {
                plane[at] = by_pixel[n * TILE_CHANNELS + o];
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
    debug_assert_eq!(Tiling::OutputChannels.block(), TILE_CHANNELS);
    let run = match (tiles.stride, tiles.tile) {
        (1, (1, 6)) => output_channels_avx2::<1, 1, 6>,
        (2, (1, 6)) => output_channels_avx2::<2, 1, 6>,
        (1, (2, 3)) => output_channels_avx2::<1, 2, 3>,
        (2, (2, 3)) => output_channels_avx2::<2, 2, 3>,
        (1, (3, 2)) => output_channels_avx2::<1, 3, 2>,
        (2, (3, 2)) => output_channels_avx2::<2, 3, 2>,
        _ => panic!("no output-channel kernel for {tiles:?}"),
    };
    // SAFETY: `detect` hands this function out only on CPUs with AVX2 and FMA.
    unsafe { run(padded, padded_dims, tiles.out, weights, bias, output) }
}

/// 16 output channels at stride `S`, in tiles of `R` rows x `N` columns
/// (6 pixels).
#[target_feature(enable = "avx2,fma")]
fn output_channels_avx2<const S: usize, const R: usize, const N: usize>(
    padded: &[f32],
    (channels, padded_height, padded_width): (usize, usize, usize),
    (height, width): (usize, usize),
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    const { assert!(R * N == TILE_PIXELS) };
    let padded_plane = padded_height * padded_width;
    let plane = height * width;
    assert!(
        height >= R && width >= N,
        "the tile is larger than the output"
    );
    // Every tap of every output pixel lies inside the padded planes.
    assert!((height - 1) * S + 2 < padded_height && (width - 1) * S + 2 < padded_width);
    assert!(padded.len() >= channels * padded_plane);
    assert!(weights.len() >= channels * 9 * TILE_CHANNELS);
    assert!(output.len() >= TILE_CHANNELS * plane);
    for y0 in tile_starts(height, R) {
        for x0 in tile_starts(width, N) {
            // Each pixel's top-left tap in the first channel's padded plane.
            let pixels: [*const f32; TILE_PIXELS] = std::array::from_fn(|i| {
                let (row, column) = ((y0 + i / N) * S, (x0 + i % N) * S);
                padded[row * padded_width + column..].as_ptr()
            });
            let mut tile = Tile::new(bias);
            // Taps outside, channels inside: with taps inside, LLVM keeps the
            // values neighbouring pixels share between taps in registers and
            // spills the sums to make room. A few channels at a time, so that
            // their rows and weights stay in L1 over the nine taps.
            for first in (0..channels).step_by(CHANNELS_IN_L1) {
                let group = first..channels.min(first + CHANNELS_IN_L1);
                for tap in 0..9 {
                    for c in group.clone() {
                        let offset = c * padded_plane + tap / 3 * padded_width + tap % 3;
                        // SAFETY: the tap of every pixel lies inside channel
                        // c's padded plane, and the tap's 16 weights inside
                        // `weights` (both asserted above).
                        unsafe {
                            let w = weights.as_ptr().add((c * 9 + tap) * TILE_CHANNELS);
                            tile.multiply_add(&pixels, offset, w);
                        }
                    }
                }
            }
            let at = std::array::from_fn(|i| (y0 + i / N) * width + x0 + i % N);
            tile.store_channels_first(output, plane, at);
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
    // SAFETY: `detect` hands this function out only on CPUs with AVX2 and FMA.
    unsafe { pointwise_first_avx2(input, pixels, weights, bias, output) }
}

/// Every block of 8 output channels the slices hold (the kernel's
/// `first_blocks_per_task`, or fewer) as passes of 4 channels x 24 pixels
/// (three registers) in 12 accumulators; each input vector, loaded once a
/// pass, meets the 4 channels' weights as broadcasts. The passes of every
/// block run over one strip of 24 pixels before the next, so that the
/// strip's rows are read from L1 after the first pass. Tiles at the end of
/// the rows overlap their neighbours.
#[target_feature(enable = "avx2,fma")]
fn pointwise_first_avx2(
    input: &[&[f32]],
    pixels: usize,
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    const B: usize = 8;
    debug_assert_eq!(Channels::First.block(), B);
    let channels: usize = input.iter().map(|part| part.len() / pixels).sum();
    let outputs = bias.len();
    assert!(outputs.is_multiple_of(B));
    assert!(weights.len() >= channels * outputs && output.len() >= outputs * pixels);
    let rows = || input.iter().flat_map(|part| part.chunks_exact(pixels));
    if pixels < FIRST_PIXELS {
        // Rows padded with zeros to one tile, and the tile's valid part kept.
        let padding = std::iter::repeat_n(0.0, FIRST_PIXELS - pixels);
        let wide: Vec<f32> = rows()
            .flat_map(|row| row.iter().copied().chain(padding.clone()))
            .collect();
        let mut wide_output = vec![0.0; outputs * FIRST_PIXELS];
        pointwise_first_avx2(&[&wide], FIRST_PIXELS, weights, bias, &mut wide_output);
        for (output, wide) in output
            .chunks_exact_mut(pixels)
            .zip(wide_output.chunks_exact(FIRST_PIXELS))
        {
            output.copy_from_slice(&wide[..pixels]);
        }
        return;
    }
    for p0 in tile_starts(pixels, FIRST_PIXELS) {
        // A pass's 4 channels lie in one block: FIRST_CHANNELS divides B.
        for first in (0..outputs).step_by(FIRST_CHANNELS) {
            let block_weights = &weights[first / B * channels * B..][..channels * B];
            let mut acc: [[__m256; 3]; FIRST_CHANNELS] =
                std::array::from_fn(|o| [_mm256_set1_ps(bias[first + o]); 3]);
            for (row, taps) in rows().zip(block_weights.chunks_exact(B)) {
                let at = row[p0..][..FIRST_PIXELS].as_ptr();
                // SAFETY: the slice holds 3 LANES values.
                let v = unsafe {
                    [
                        _mm256_loadu_ps(at),
                        _mm256_loadu_ps(at.add(LANES)),
                        _mm256_loadu_ps(at.add(2 * LANES)),
                    ]
                };
                for (acc, &w) in acc.iter_mut().zip(&taps[first % B..][..FIRST_CHANNELS]) {
                    let w = _mm256_set1_ps(w);
                    for (acc, &v) in acc.iter_mut().zip(&v) {
                        *acc = _mm256_fmadd_ps(w, v, *acc);
                    }
                }
            }
            for (o, acc) in acc.iter().enumerate() {
                let at = output[(first + o) * pixels + p0..][..FIRST_PIXELS].as_mut_ptr();
                for (j, &acc) in acc.iter().enumerate() {
                    // SAFETY: the slice holds 3 LANES values.
                    unsafe { _mm256_storeu_ps(at.add(j * LANES), acc) };
                }
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
    // SAFETY: `detect` hands this function out only on CPUs with AVX2 and FMA.
    unsafe { pointwise_last_avx2(input, dims, weights, bias, output) }
}

/// Each block of 32 output channels as two [`Tile`]s of 16 channels x 6
/// pixels; each input value, broadcast, meets two registers of weights.
#[target_feature(enable = "avx2,fma")]
fn pointwise_last_avx2(
    input: &[f32],
    (channels, pixels): (usize, usize),
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    const B: usize = 2 * TILE_CHANNELS;
    debug_assert_eq!(Channels::Last.block(), B);
    let outputs = bias.len();
    assert!(pixels >= TILE_PIXELS && outputs.is_multiple_of(B));
    assert!(input.len() >= pixels * channels && weights.len() >= outputs * channels);
    assert!(output.len() >= pixels * outputs);
    for p0 in tile_starts(pixels, TILE_PIXELS) {
        let rows = std::array::from_fn(|n| input[(p0 + n) * channels..][..channels].as_ptr());
        let blocks = weights.chunks_exact(channels * B).zip(bias.chunks_exact(B));
        for (block, (weights, bias)) in blocks.enumerate() {
            for half in (0..B).step_by(TILE_CHANNELS) {
                let mut tile = Tile::new(&bias[half..]);
                for c in 0..channels {
                    // SAFETY: c < channels, the length of every row; the
                    // block holds B weights for each of them.
                    unsafe { tile.multiply_add(&rows, c, weights.as_ptr().add(c * B + half)) };
                }
                let column = block * B + half;
                tile.store_channels_last(
                    output,
                    std::array::from_fn(|n| (p0 + n) * outputs + column),
                );
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
    // SAFETY: `detect` hands this function out only on CPUs with AVX2 and FMA.
    unsafe { pointwise_last_to_first_avx2(input, dims, weights, bias, output) }
}

/// A block of 16 output channels in [`Tile`]s of 6 pixels; each input
/// value, broadcast, meets two registers of weights, and the finished tile
/// is transposed into the 16 output rows.
#[target_feature(enable = "avx2,fma")]
fn pointwise_last_to_first_avx2(
    input: &[f32],
    (channels, pixels): (usize, usize),
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    debug_assert_eq!(Channels::LastToFirst.block(), TILE_CHANNELS);
    assert!(pixels >= TILE_PIXELS);
    assert!(input.len() >= pixels * channels && weights.len() >= channels * TILE_CHANNELS);
    assert!(output.len() >= TILE_CHANNELS * pixels);
    for p0 in tile_starts(pixels, TILE_PIXELS) {
        let rows = std::array::from_fn(|n| input[(p0 + n) * channels..][..channels].as_ptr());
        let mut tile = Tile::new(bias);
        for c in 0..channels {
            // SAFETY: c < channels, the length of every row; `weights` holds
            // 16 for each of them (asserted).
            unsafe { tile.multiply_add(&rows, c, weights.as_ptr().add(c * TILE_CHANNELS)) };
        }
        tile.store_channels_first(output, pixels, std::array::from_fn(|n| p0 + n));
    }
}

fn silu(values: &mut [f32]) {
    // SAFETY: `detect` hands this function out only on CPUs with AVX2 and FMA.
    unsafe { silu_avx2(values) }
}

#[target_feature(enable = "avx2,fma")]
fn silu_avx2(values: &mut [f32]) {
    let (blocks, tail) = values.as_chunks_mut::<LANES>();
    for block in blocks {
        // SAFETY: a block holds LANES values.
        unsafe {
            let x = _mm256_loadu_ps(block.as_ptr());
            _mm256_storeu_ps(block.as_mut_ptr(), silu_lanes(x));
        }
    }
    let mut lanes = [0.0; LANES];
    lanes[..tail.len()].copy_from_slice(tail);
    // SAFETY: `lanes` holds LANES values.
    unsafe {
        let x = _mm256_loadu_ps(lanes.as_ptr());
        _mm256_storeu_ps(lanes.as_mut_ptr(), silu_lanes(x));
    }
    let len = tail.len();
    tail.copy_from_slice(&lanes[..len]);
}

/// `x / (1 + exp(-x))` lane by lane: where `exp(-x)` overflows to infinity
/// the quotient is -0, where it is 0 the quotient is `x`; NaN stays NaN.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn silu_lanes(x: __m256) -> __m256 {
    let exp_minus_x = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x));
    _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), exp_minus_x))
}
