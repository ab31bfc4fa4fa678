//! The AVX-512F kernel: 8 output channels x 32 pixels of a row (two
//! registers) accumulated in 16 registers; each input vector, loaded once
//! per tap, meets the 8 channels' weights as broadcasts. The image borders
//! are masked lanes and skipped rows, read as the zero padding.

use super::{BlockFn, OUTPUT_CHANNEL_BLOCK as BLOCK};
use std::arch::x86_64::*;

/// f32 lanes of a register.
const LANES: usize = 16;

/// The kernel and its name, if this CPU supports AVX-512F.
pub(super) fn detect() -> Option<(&'static str, BlockFn)> {
    is_x86_feature_detected!("avx512f").then_some(("avx512f", block as BlockFn))
}

fn block(
    input: &[f32],
    dims: (usize, usize, usize),
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    // SAFETY: `detect` hands this function out only on CPUs with AVX-512F.
    unsafe { block_avx512(input, dims, weights, bias, output) }
}

/// Lanes `i` of a register whose input column `start + i` lies in `0..width`.
fn lane_mask(start: isize, width: usize) -> __mmask16 {
    (0..LANES as isize)
        .filter(|i| (0..width as isize).contains(&(start + i)))
        .fold(0, |mask, i| mask | (1 << i))
}

#[target_feature(enable = "avx512f")]
fn block_avx512(
    input: &[f32],
    (channels, height, width): (usize, usize, usize),
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    assert!(input.len() >= channels * height * width && weights.len() >= channels * 9 * BLOCK);
    assert!(bias.len() >= BLOCK && output.len() >= BLOCK * height * width);
    let plane = height * width;
    for x0 in (0..width).step_by(2 * LANES) {
        // For each kx, the lanes of the two registers that read inside the row.
        let masks: [[__mmask16; 2]; 3] = std::array::from_fn(|kx| {
            let start = (x0 + kx) as isize - 1;
            [
                lane_mask(start, width),
                lane_mask(start + LANES as isize, width),
            ]
        });
        let stored = [
            lane_mask(x0 as isize, width),
            lane_mask((x0 + LANES) as isize, width),
        ];
        for y in 0..height {
            let mut acc: [[__m512; 2]; BLOCK] =
                std::array::from_fn(|o| [_mm512_set1_ps(bias[o]); 2]);
            for ky in 0..3 {
                let Some(row) = (y + ky).checked_sub(1).filter(|&r| r < height) else {
                    continue;
                };
                for c in 0..channels {
                    let row = input[c * plane + row * width..].as_ptr();
                    let taps = &weights[(c * 9 + ky * 3) * BLOCK..][..3 * BLOCK];
                    for (kx, (mask, taps)) in masks.iter().zip(taps.chunks_exact(BLOCK)).enumerate()
                    {
                        // The column x0 + kx - 1 may lie before the row (and the
                        // slice): only masked-in lanes, inside the row, are read.
                        let at = row.wrapping_add(x0 + kx).wrapping_sub(1);
                        // SAFETY: AVX-512 masked loads touch only the lanes of
                        // the mask, here columns inside this row of `input`.
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
            for (o, acc) in acc.iter().enumerate() {
                let at = output[o * plane + y * width + x0..].as_mut_ptr();
                // SAFETY: the store masks keep to columns x0.. of this row.
                unsafe {
                    _mm512_mask_storeu_ps(at, stored[0], acc[0]);
                    _mm512_mask_storeu_ps(at.wrapping_add(LANES), stored[1], acc[1]);
                }
            }
        }
    }
}
