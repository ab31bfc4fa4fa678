//! The direct convolution's kernels, one per instruction set (x86_64:
//! AVX-512F), and what they share: the weights' order and the split of the
//! work over tract's threads.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64::detect;

use crate::infer::on_tract_threads;

/// No direct kernel on other CPUs: tract's convolution stays there. (A NEON
/// version of the same loop executed 1.03x the instructions of tract's
/// im2col path on a Cortex-A72 frame, docs/performance.md.)
#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Option<(&'static str, BlockFn)> {
    None
}

/// Output channels a kernel computes together (and per thread task): the
/// output channel count must be a multiple of it.
pub const OUTPUT_CHANNEL_BLOCK: usize = 8;

/// Computes one block of [`OUTPUT_CHANNEL_BLOCK`] output channels: `input`
/// is `[C, H, W]` with `(C, H, W)` as given, `weights` the block's
/// `[C][9][OUTPUT_CHANNEL_BLOCK]`, `bias` its `OUTPUT_CHANNEL_BLOCK` values,
/// `output` its `[OUTPUT_CHANNEL_BLOCK, H, W]`.
type BlockFn = fn(&[f32], (usize, usize, usize), &[f32], &[f32], &mut [f32]);

/// A direct convolution kernel for this CPU.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    name: &'static str,
    block: BlockFn,
}

impl Kernel {
    /// The fastest kernel this CPU runs, if any is faster than tract's
    /// im2col and matrix product.
    pub fn best() -> Option<Kernel> {
        detect().map(|(name, block)| Kernel { name, block })
    }

    /// The kernel's instruction set, for logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Convolves `input` (`[C, H, W]`, `(C, H, W)` as given) into `output`
    /// (`[O, H, W]`), with `weights` from [`pack_weights`] and one bias per
    /// output channel, on the current tract executor's threads.
    pub fn run(
        &self,
        input: &[f32],
        (channels, height, width): (usize, usize, usize),
        weights: &[f32],
        bias: &[f32],
        output: &mut [f32],
    ) {
        let plane = height * width;
        assert_eq!(input.len(), channels * plane, "input is not [C, H, W]");
        assert_eq!(
            weights.len(),
            bias.len() * channels * 9,
            "weights are not [O][C][9]"
        );
        assert_eq!(output.len(), bias.len() * plane, "output is not [O, H, W]");
        assert_eq!(
            bias.len() % OUTPUT_CHANNEL_BLOCK,
            0,
            "output channels are not whole blocks"
        );
        let tasks: Vec<_> = output
            .chunks_mut(OUTPUT_CHANNEL_BLOCK * plane)
            .zip(weights.chunks(OUTPUT_CHANNEL_BLOCK * channels * 9))
            .zip(bias.chunks(OUTPUT_CHANNEL_BLOCK))
            .collect();
        on_tract_threads(tasks, |((output, weights), bias)| {
            (self.block)(input, (channels, height, width), weights, bias, output)
        });
    }
}

/// `[O][C][3][3]` weights in the kernels' order, `[O / B][C][9][B]` for
/// blocks of B = [`OUTPUT_CHANNEL_BLOCK`] output channels: the B weights one
/// input value meets are adjacent.
pub fn pack_weights(weights: &[f32], input_channels: usize) -> Vec<f32> {
    let per_output = input_channels * 9;
    let mut packed = Vec::with_capacity(weights.len());
    for block in weights.chunks(OUTPUT_CHANNEL_BLOCK * per_output) {
        for tap in 0..per_output {
            packed.extend(block.chunks(per_output).map(|output| output[tap]));
        }
    }
    packed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution by its definition, in f64: `[O][C][3][3]` weights,
    /// one zero of padding on every side.
    fn by_definition(
        input: &[f32],
        (channels, height, width): (usize, usize, usize),
        weights: &[f32],
        bias: &[f32],
    ) -> Vec<f64> {
        let mut output = Vec::with_capacity(bias.len() * height * width);
        for (o, &b) in bias.iter().enumerate() {
            for y in 0..height as isize {
                for x in 0..width as isize {
                    let mut sum = f64::from(b);
                    for c in 0..channels {
                        for (tap, &w) in weights[(o * channels + c) * 9..][..9].iter().enumerate() {
                            let (row, column) =
                                (y + tap as isize / 3 - 1, x + tap as isize % 3 - 1);
                            if (0..height as isize).contains(&row)
                                && (0..width as isize).contains(&column)
                            {
                                let at = (c * height + row as usize) * width + column as usize;
                                sum += f64::from(w) * f64::from(input[at]);
                            }
                        }
                    }
                    output.push(sum);
                }
            }
        }
        output
    }

    /// Says on the real stderr, past the harness's capture, that `test` did
    /// not run.
    fn skip(test: &str) {
        use std::io::Write;
        let why = "no direct convolution kernel for this CPU";
        let _ = writeln!(std::io::stderr(), "\n**** SKIPPED {test}: {why} ****\n");
    }

    /// Values in [-1, 1) from a fixed sequence.
    fn values(count: usize, seed: u32) -> Vec<f32> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn kernel_computes_the_padded_convolution() {
        let Some(kernel) = Kernel::best() else {
            skip("kernel_computes_the_padded_convolution");
            return;
        };
        // Widths around the kernel's 16- and 32-pixel registers, one-row and
        // one-channel images, one and two blocks of output channels.
        for (seed, &(channels, outputs, height, width)) in [
            (12, 16, 7, 112),
            (3, 8, 5, 28),
            (5, 8, 4, 33),
            (1, 8, 1, 40),
            (7, 16, 3, 17),
            (2, 8, 6, 64),
            (4, 8, 2, 1),
        ]
        .iter()
        .enumerate()
        {
            let dims = (channels, height, width);
            let input = values(channels * height * width, seed as u32);
            let weights = values(outputs * channels * 9, 100 + seed as u32);
            let bias = values(outputs, 200 + seed as u32);
            let mut output = vec![f32::NAN; outputs * height * width];
            kernel.run(
                &input,
                dims,
                &pack_weights(&weights, channels),
                &bias,
                &mut output,
            );
            let want = by_definition(&input, dims, &weights, &bias);
            for (i, (&got, &want)) in output.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{dims:?} -> {outputs}: element {i} is {got}, expected {want}"
                );
            }
        }
    }

    #[test]
    fn thread_count_does_not_change_results() {
        use tract_linalg::multithread::{multithread_tract_scope, Executor};
        let Some(kernel) = Kernel::best() else {
            skip("thread_count_does_not_change_results");
            return;
        };
        let dims = (6, 9, 30);
        let weights = pack_weights(&values(32 * 6 * 9, 1), 6);
        let (input, bias) = (values(6 * 9 * 30, 2), values(32, 3));
        let run = |executor| {
            let mut output = vec![0.0; 32 * 9 * 30];
            multithread_tract_scope(executor, || {
                kernel.run(&input, dims, &weights, &bias, &mut output)
            });
            output.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(run(Executor::SingleThread), run(Executor::multithread(2)));
    }

    #[test]
    fn packed_weights_put_a_tap_of_eight_outputs_together() {
        // 16 outputs, 1 input channel: weight (o, tap) = 10 o + tap.
        let weights: Vec<f32> = (0..16)
            .flat_map(|o| (0..9).map(move |tap| (10 * o + tap) as f32))
            .collect();
        let packed = pack_weights(&weights, 1);
        assert_eq!(packed[..8], [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]);
        assert_eq!(
            packed[8..16],
            [1.0, 11.0, 21.0, 31.0, 41.0, 51.0, 61.0, 71.0]
        );
        assert_eq!(
            packed[72..80],
            [80.0, 90.0, 100.0, 110.0, 120.0, 130.0, 140.0, 150.0]
        );
    }
}
