//! The direct convolution's kernels, one module per instruction set
//! (x86_64: AVX-512F, AVX2+FMA), in two tilings ([`Tiling`]), and what they
//! share: the weights' order, the zero-padded input copy, the
//! [`Activation`] applied to each finished block and the split of the work
//! over tract's threads.

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64::available;

use crate::infer::on_tract_threads;
use std::cell::RefCell;

/// No direct kernel on other CPUs: tract's convolution stays there. (A NEON
/// version of the row-pixel loop executed 1.03x the instructions of tract's
/// im2col path on a Cortex-A72 frame, docs/performance.md.)
#[cfg(not(target_arch = "x86_64"))]
fn available() -> impl Iterator<Item = Kernel> {
    std::iter::empty()
}

/// Below 28 pixels wide the output-channel tiling is faster: row pixels ran
/// at 47.5 G multiply-adds a second at 14x14 against its 52.5-52.8, and at
/// 41.5 against 45 at 7x7 (`cargo bench --bench conv`, a Zen 4 core,
/// docs/performance.md).
pub const MIN_ROW_PIXELS_WIDTH: usize = 28;

/// Which values a kernel's vector registers hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tiling {
    /// 32 consecutive pixels of the output plane, its rows end to end, for 8
    /// output channels at a time: each input vector, loaded once per tap,
    /// meets 8 broadcast weights.
    /// Stride 1 over rows of at least `MIN_ROW_PIXELS_WIDTH` (28) pixels,
    /// on kernels that have it (AVX-512F).
    RowPixels,
    /// 16 output channels of one pixel, for a tile of pixels at a time
    /// (the kernel's own output-channel tiles): each input value,
    /// broadcast, meets 16 weights. Any width, stride 1 or 2, from a
    /// zero-padded copy of the input.
    OutputChannels,
}

impl Tiling {
    /// Output channels a kernel computes together (and per thread task): the
    /// output channel count must be a multiple of it.
    pub fn block(self) -> usize {
        match self {
            Tiling::RowPixels => 8,
            Tiling::OutputChannels => 16,
        }
    }
}

/// The first row (or column) of each tile of `size` over `0..len`, the last
/// one moved back to end at `len`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86_64 kernels only
fn tile_starts(len: usize, size: usize) -> impl Iterator<Item = usize> {
    (0..len)
        .step_by(size)
        .map(move |start| start.min(len - size))
}

/// Computes one block of [`Tiling::RowPixels`]' 8 output channels: `input`
/// is `[C, H, W]` with `(C, H, W)` as given, `weights` the block's
/// `[C][9][8]`, `bias` its 8 values, `output` its `[8, H, W]`.
type RowPixelsFn = fn(&[f32], (usize, usize, usize), &[f32], &[f32], &mut [f32]);

/// Where the output-channel tiles of a layer lie: its `stride`, the
/// output's `(height, width)` and the tile's `(rows, columns)`.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // read by the x86_64 kernels only
struct OutputTiles {
    stride: usize,
    out: (usize, usize),
    tile: (usize, usize),
}

/// Computes one block of [`Tiling::OutputChannels`]' 16 output channels:
/// `padded` is `[C, H + 2, W + 2]` with `(C, H + 2, W + 2)` as given,
/// `weights` the block's `[C][9][16]`, `bias` its 16 values, `output` its
/// `[16, height, width]` for the tiles' output size.
type OutputChannelsFn = fn(&[f32], (usize, usize, usize), OutputTiles, &[f32], &[f32], &mut [f32]);

/// What a layer applies to its sums before they leave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Nothing: the sums are the output.
    Linear,
    /// SiLU, `x * sigmoid(x)`: the model's convolution blocks end with it.
    /// Applied to each thread task's output block while it is in cache,
    /// rather than by a pass of its own over the whole map.
    Silu,
}

/// A layer's parameters for [`Kernel::run`]: its tiling, stride, weights
/// from [`pack_weights`] for that tiling, one bias per output channel and
/// its activation.
#[derive(Clone, Copy, Debug)]
pub struct Layer<'a> {
    pub tiling: Tiling,
    pub stride: usize,
    pub weights: &'a [f32],
    pub bias: &'a [f32],
    pub activation: Activation,
}

/// A pointwise layer's parameters for [`Kernel::run_pointwise`]: where its
/// channels lie, its weights from [`pack_weights_1x1`] for that layout, one
/// bias per output channel and its activation.
#[derive(Clone, Copy, Debug)]
pub struct PointwiseLayer<'a> {
    pub channels: Channels,
    pub weights: &'a [f32],
    pub bias: &'a [f32],
    pub activation: Activation,
}

/// Where a pointwise convolution's channels lie in its input and output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channels {
    /// `[K, P]` in, `[M, P]` out: 8 output channels x 32 pixels (two
    /// registers) a tile, each input vector met by 8 broadcast weights.
    First,
    /// `[P, K]` in, `[P, M]` out: 32 output channels (two registers) x 7
    /// pixels a tile, each input value broadcast into 2 multiply-adds.
    Last,
    /// `[P, K]` in, `[M, P]` out (tokens into a channel-first map): 16
    /// output channels (a register) x 14 pixels a tile, each input value
    /// broadcast into a multiply-add, the finished tile scattered to the 16
    /// output rows.
    LastToFirst,
}

impl Channels {
    /// Output channels a kernel computes together: the output channel
    /// count must be a multiple of it.
    pub fn block(self) -> usize {
        match self {
            Channels::First => 8,
            Channels::Last => 32,
            Channels::LastToFirst => 16,
        }
    }

    /// The fewest pixels the layout handles: a tile's (none for
    /// [`Channels::First`], whose tiles are masked).
    pub fn min_pixels(self) -> usize {
        match self {
            Channels::First => 1,
            Channels::Last => CHANNELS_LAST_TILE,
            Channels::LastToFirst => LAST_TO_FIRST_TILE,
        }
    }
}

/// Pixels a [`Channels::Last`] tile computes together.
const CHANNELS_LAST_TILE: usize = 7;

/// Pixels a [`Channels::LastToFirst`] tile computes together.
const LAST_TO_FIRST_TILE: usize = 14;

/// Pixel rows a [`Channels::Last`] thread task computes (8 tiles).
const CHANNELS_LAST_TASK: usize = 8 * CHANNELS_LAST_TILE;

/// Computes a pointwise convolution: for [`Channels::LastToFirst`], one
/// block of 16 output channels (`input` `[P, K]` with `(K, P)` as given,
/// `weights` the block's `[K][16]`, `bias` its 16 values, `output` its `[16,
/// P]`); for [`Channels::Last`], every output channel of some pixels
/// (`input` their `[P, K]`, `weights` all `[M / 32][K][32]`, `bias` all M
/// values, `output` their `[P, M]`).
type PointwiseFn = fn(&[f32], (usize, usize), &[f32], &[f32], &mut [f32]);

/// Computes blocks of 8 output channels of a [`Channels::First`] pointwise
/// convolution over P pixels (as given): the input's `[K, P]` rows come in
/// parts, runs of whole rows in channel order (a `Concat`'s inputs, read
/// where they lie), `weights` is the n blocks' `[n][K][8]`, `bias` their 8n
/// values, `output` their `[8n, P]`; n is at most the kernel's
/// `first_blocks_per_task`.
type PointwiseFirstFn = fn(&[&[f32]], usize, &[f32], &[f32], &mut [f32]);

/// Replaces every value of a slice by its SiLU, `x / (1 + exp(-x))`, to
/// within a few units in the last place of f32.
type SiluFn = fn(&mut [f32]);

/// The direct convolution kernels of one instruction set.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    name: &'static str,
    /// None where the instruction set has no row-pixel kernel: its layers
    /// take the output-channel tiling.
    row_pixels: Option<RowPixelsFn>,
    /// The output-channel tiles, rows x columns, the kernel computes.
    output_channel_tiles: &'static [(usize, usize)],
    /// Blocks of [`Channels::First`] output channels a thread task takes at
    /// most, when there are tasks enough for two threads: the kernel reads
    /// each strip of the input once for all of them.
    first_blocks_per_task: usize,
    output_channels: OutputChannelsFn,
    pointwise_first: PointwiseFirstFn,
    pointwise_last: PointwiseFn,
    pointwise_last_to_first: PointwiseFn,
    silu: SiluFn,
}

impl Kernel {
    /// The fastest kernels this CPU runs, if any is faster than tract's
    /// im2col and matrix product.
    pub fn best() -> Option<Kernel> {
        available().next()
    }

    /// Every kernel this CPU runs, the fastest first (for tests and
    /// benchmarks).
    pub fn available() -> impl Iterator<Item = Kernel> {
        available()
    }

    /// The tiling this kernel computes a 3x3 convolution padded by one with
    /// `stride` in, for an `[O, out_height, out_width]` output, if it has
    /// one: row pixels where it has them, else output channels at strides
    /// 1 and 2 for outputs of at least one of its tiles. (At stride 2, row
    /// pixels from a copy of the input with each row's even and odd columns
    /// apart ran at 32 G multiply-adds a second on the stem's 16 -> 32
    /// layer, output channels at 44: `cargo bench --bench conv`,
    /// docs/performance.md.)
    pub fn tiling(&self, stride: usize, out: (usize, usize)) -> Option<Tiling> {
        if self.row_pixels.is_some() && stride == 1 && out.1 >= MIN_ROW_PIXELS_WIDTH {
            Some(Tiling::RowPixels)
        } else if matches!(stride, 1 | 2) && self.output_channel_tile(out).is_some() {
            Some(Tiling::OutputChannels)
        } else {
            None
        }
    }

    /// The [`Tiling::OutputChannels`] tile, rows x columns, for an output of
    /// `(height, width)`: of the kernel's tiles that fit, the one that
    /// computes the fewest pixels (the first of those), as tiles at the
    /// bottom and right edges overlap their neighbours rather than run past
    /// the output.
    fn output_channel_tile(&self, (height, width): (usize, usize)) -> Option<(usize, usize)> {
        let computed = |(rows, columns): (usize, usize)| {
            height.div_ceil(rows) * rows * width.div_ceil(columns) * columns
        };
        self.output_channel_tiles
            .iter()
            .copied()
            .filter(|&(rows, columns)| height >= rows && width >= columns)
            .fold(None, |best: Option<(usize, usize)>, tile| match best {
                Some(best) if computed(best) <= computed(tile) => Some(best),
                _ => Some(tile),
            })
    }

    /// The kernels' instruction set, for logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Applies `activation` to a finished output block.
    pub(in crate::conv) fn activate(&self, activation: Activation, output: &mut [f32]) {
        match activation {
            Activation::Linear => {}
            Activation::Silu => (self.silu)(output),
        }
    }

    /// Convolves `input` (`[C, H, W]`, `(C, H, W)` as given) into `output`
    /// (`[O, H', W']`, `H' = (H - 1) / stride + 1`, `W'` alike) as `layer`
    /// says, on the current tract executor's threads. Panics if the slices'
    /// lengths disagree or the layer's tiling is not this kernel's for the
    /// shapes ([`Kernel::tiling`]).
    pub fn run(
        &self,
        layer: &Layer,
        input: &[f32],
        (channels, height, width): (usize, usize, usize),
        output: &mut [f32],
    ) {
        let Layer {
            tiling,
            stride,
            weights,
            bias,
            activation,
        } = *layer;
        let out = ((height - 1) / stride + 1, (width - 1) / stride + 1);
        assert_eq!(
            self.tiling(stride, out),
            Some(tiling),
            "{tiling:?} does not handle stride {stride} over {height}x{width}"
        );
        let (plane, out_plane, block) = (height * width, out.0 * out.1, tiling.block());
        assert_eq!(input.len(), channels * plane, "input is not [C, H, W]");
        assert_eq!(
            weights.len(),
            bias.len() * channels * 9,
            "weights are not [O][C][9]"
        );
        assert_eq!(
            output.len(),
            bias.len() * out_plane,
            "output is not [O, H', W']"
        );
        assert_eq!(
            bias.len() % block,
            0,
            "output channels are not whole blocks"
        );
        let tasks: Vec<_> = output
            .chunks_mut(block * out_plane)
            .zip(weights.chunks(block * channels * 9))
            .zip(bias.chunks(block))
            .collect();
        match tiling {
            Tiling::RowPixels => on_tract_threads(tasks, |((output, weights), bias)| {
                let row_pixels = self.row_pixels.expect("checked by tiling");
                row_pixels(input, (channels, height, width), weights, bias, output);
                self.activate(activation, output);
            }),
            Tiling::OutputChannels => with_padded_input_buffer(|padded| {
                zero_padded(input, (channels, height, width), padded);
                let padded_dims = (channels, height + 2, width + 2);
                let tiles = OutputTiles {
                    stride,
                    out,
                    tile: self.output_channel_tile(out).expect("checked by tiling"),
                };
                on_tract_threads(tasks, |((output, weights), bias)| {
                    (self.output_channels)(padded, padded_dims, tiles, weights, bias, output);
                    self.activate(activation, output);
                })
            }),
        }
    }
}

impl Kernel {
    /// The pointwise convolution of `input` (`[K, P]` or `[P, K]` as
    /// `layer.channels` says, `(K, P)` as given) into `output` (`[M, P]` or
    /// `[P, M]`) as `layer` says, on the current tract executor's threads.
    /// `input` is one slice, or for [`Channels::First`] the `[K, P]` rows in
    /// parts: runs of whole rows in channel order.
    pub fn run_pointwise(
        &self,
        layer: &PointwiseLayer,
        input: &[&[f32]],
        (input_channels, pixels): (usize, usize),
        output: &mut [f32],
    ) {
        let PointwiseLayer {
            channels,
            weights,
            bias,
            activation,
        } = *layer;
        let (k, m, block) = (input_channels, bias.len(), channels.block());
        assert!(
            channels == Channels::First || input.len() == 1,
            "{channels:?} input in {} parts",
            input.len()
        );
        assert!(pixels >= channels.min_pixels(), "fewer pixels than a tile");
        assert!(
            input.iter().all(|part| part.len() % pixels == 0)
                && input.iter().map(|part| part.len()).sum::<usize>() == k * pixels,
            "input is not K x P"
        );
        assert_eq!(weights.len(), m * k, "weights are not M x K");
        assert_eq!(output.len(), m * pixels, "output is not M x P");
        assert_eq!(m % block, 0, "output channels are not whole blocks");
        match channels {
            Channels::First | Channels::LastToFirst => {
                let task_blocks = match channels {
                    Channels::First => self.first_blocks_per_task.min((m / block).div_ceil(2)),
                    _ => 1,
                };
                let task = task_blocks * block;
                let tasks: Vec<_> = output
                    .chunks_mut(task * pixels)
                    .zip(weights.chunks(task * k))
                    .zip(bias.chunks(task))
                    .collect();
                on_tract_threads(tasks, |((output, weights), bias)| {
                    if channels == Channels::First {
                        (self.pointwise_first)(input, pixels, weights, bias, output);
                    } else {
                        let dims = (k, pixels);
                        (self.pointwise_last_to_first)(input[0], dims, weights, bias, output);
                    }
                    self.activate(activation, output);
                });
            }
            Channels::Last => {
                // Runs of CHANNELS_LAST_TASK pixels, the last one taking the
                // remainder when it would be shorter than a tile.
                let mut tasks = Vec::new();
                let (mut input, mut output) = (input[0], output);
                while !input.is_empty() {
                    let rows = input.len() / k;
                    let take = if rows < CHANNELS_LAST_TASK + CHANNELS_LAST_TILE {
                        rows
                    } else {
                        CHANNELS_LAST_TASK
                    };
                    let (task_input, rest) = input.split_at(take * k);
                    let (task_output, rest_output) = output.split_at_mut(take * m);
                    tasks.push((task_input, task_output, take));
                    (input, output) = (rest, rest_output);
                }
                on_tract_threads(tasks, |(input, output, rows)| {
                    (self.pointwise_last)(input, (k, rows), weights, bias, output);
                    self.activate(activation, output);
                });
            }
        }
    }
}

thread_local! {
    /// [`Tiling::OutputChannels`]' zero-padded input copy, kept from one
    /// layer to the next (and one frame to the next) by the thread that
    /// runs the model, so that no frame allocates it again.
    static PADDED_INPUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with this thread's [`PADDED_INPUT`], or with a new buffer if
/// a run further up this thread's stack holds it (a rayon worker that took
/// up another model's run while it waited).
fn with_padded_input_buffer<R>(f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    PADDED_INPUT.with(|buffer| match buffer.try_borrow_mut() {
        Ok(mut buffer) => f(&mut buffer),
        Err(_) => f(&mut Vec::new()),
    })
}

/// Makes `padded` `input` (`[C, H, W]`) with one zero on every side: `[C,
/// H + 2, W + 2]`, writing each value once (the buffer is reused between
/// layers, so whatever an earlier one left is overwritten).
fn zero_padded(
    input: &[f32],
    (channels, height, width): (usize, usize, usize),
    padded: &mut Vec<f32>,
) {
    let padded_width = width + 2;
    let padded_plane = (height + 2) * padded_width;
    padded.resize(channels * padded_plane, 0.0);
    padded.truncate(channels * padded_plane);
    let planes = padded.chunks_exact_mut(padded_plane);
    for (padded, plane) in planes.zip(input.chunks_exact(height * width)) {
        let (top, rest) = padded.split_at_mut(padded_width);
        let (rows, bottom) = rest.split_at_mut(height * padded_width);
        top.fill(0.0);
        bottom.fill(0.0);
        for (padded, row) in rows
            .chunks_exact_mut(padded_width)
            .zip(plane.chunks_exact(width))
        {
            padded[0] = 0.0;
            padded[1..=width].copy_from_slice(row);
            padded[width + 1] = 0.0;
        }
    }
}

/// `[O][C][3][3]` weights in `tiling`'s order, `[O / B][C][9][B]` for
/// blocks of B = [`Tiling::block`] output channels: the B weights one
/// input value meets are adjacent.
pub fn pack_weights(weights: &[f32], input_channels: usize, tiling: Tiling) -> Vec<f32> {
    pack(weights, input_channels * 9, tiling.block())
}

/// `[O][C]` pointwise weights in the order of `channels`' kernel,
/// `[O / B][C][B]` for blocks of B = [`Channels::block`] output channels.
pub fn pack_weights_1x1(weights: &[f32], input_channels: usize, channels: Channels) -> Vec<f32> {
    pack(weights, input_channels, channels.block())
}

/// `[O][per_output]` weights as `[O / block][per_output][block]`.
fn pack(weights: &[f32], per_output: usize, block: usize) -> Vec<f32> {
    let mut packed = Vec::with_capacity(weights.len());
    for block in weights.chunks(block * per_output) {
        for tap in 0..per_output {
            packed.extend(block.chunks(per_output).map(|output| output[tap]));
        }
    }
    packed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::test_support::{kernels, values};

    /// The convolution by its definition, in f64: `[O][C][3][3]` weights,
    /// one zero of padding on every side.
    fn by_definition(
        input: &[f32],
        (channels, height, width): (usize, usize, usize),
        stride: usize,
        weights: &[f32],
        bias: &[f32],
    ) -> Vec<f64> {
        let (out_height, out_width) = ((height - 1) / stride + 1, (width - 1) / stride + 1);
        let mut output = Vec::with_capacity(bias.len() * out_height * out_width);
        for (o, &b) in bias.iter().enumerate() {
            for y in 0..out_height {
                for x in 0..out_width {
                    let mut sum = f64::from(b);
                    for c in 0..channels {
                        for (tap, &w) in weights[(o * channels + c) * 9..][..9].iter().enumerate() {
                            let row = (y * stride + tap / 3) as isize - 1;
                            let column = (x * stride + tap % 3) as isize - 1;
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

    /// A 3x3 convolution of random `[C, H, W]` values in `tiling`, with
    /// its `[O][C][3][3]` weights and in the tiling's order.
    struct Case {
        tiling: Tiling,
        stride: usize,
        dims: (usize, usize, usize),
        out: (usize, usize),
        input: Vec<f32>,
        weights: Vec<f32>,
        packed: Vec<f32>,
        bias: Vec<f32>,
    }

    impl Case {
        /// `(C, O, H, W, stride)` in `kernel`'s tiling for it, if it has one
        /// whose blocks O fills.
        fn new(
            kernel: &Kernel,
            shape: (usize, usize, usize, usize, usize),
            seed: u32,
        ) -> Option<Case> {
            let (channels, outputs, height, width, stride) = shape;
            let out = ((height - 1) / stride + 1, (width - 1) / stride + 1);
            let tiling = kernel.tiling(stride, out)?;
            if outputs % tiling.block() != 0 {
                return None;
            }
            let weights = values(outputs * channels * 9, 100 + seed);
            Some(Case {
                tiling,
                stride,
                dims: (channels, height, width),
                out,
                input: values(channels * height * width, seed),
                packed: pack_weights(&weights, channels, tiling),
                weights,
                bias: values(outputs, 200 + seed),
            })
        }

        /// `kernel`'s output with `activation`.
        fn run(&self, kernel: &Kernel, activation: Activation) -> Vec<f32> {
            let layer = Layer {
                tiling: self.tiling,
                stride: self.stride,
                weights: &self.packed,
                bias: &self.bias,
                activation,
            };
            let mut output = vec![f32::NAN; self.bias.len() * self.out.0 * self.out.1];
            kernel.run(&layer, &self.input, self.dims, &mut output);
            output
        }
    }

    #[test]
    fn convolutions_compute_the_padded_convolution() {
        // Row pixels (AVX-512F): widths around the kernel's 16- and 32-pixel
        // registers, one-row and one-channel images, one and two blocks of
        // output channels. Output channels: each tile shape of each kernel
        // at both strides, outputs that are whole tiles and outputs whose
        // last tiles overlap, odd and even input sizes.
        let shapes = [
            (12, 16, 7, 112, 1),
            (3, 8, 5, 28, 1),
            (5, 8, 4, 33, 1),
            (1, 8, 1, 40, 1),
            (2, 8, 6, 64, 1),
            (16, 32, 112, 112, 2),
            (64, 16, 14, 14, 1),
            (7, 32, 7, 7, 1),
            (5, 16, 13, 27, 2),
            (3, 16, 5, 20, 1),
            (2, 16, 9, 9, 2),
            (4, 16, 4, 3, 1),
            (1, 16, 8, 6, 2),
            (3, 16, 1, 11, 2),
            (3, 16, 5, 2, 1),
        ];
        for kernel in kernels("convolutions_compute_the_padded_convolution") {
            let mut checked = 0;
            for (seed, &shape) in shapes.iter().enumerate() {
                let Some(case) = Case::new(&kernel, shape, seed as u32) else {
                    continue;
                };
                let output = case.run(&kernel, Activation::Linear);
                let (dims, stride) = (case.dims, case.stride);
                let want = by_definition(&case.input, dims, stride, &case.weights, &case.bias);
                for (i, (&got, &want)) in output.iter().zip(&want).enumerate() {
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{}, {:?}: {shape:?}: element {i} is {got}, expected {want}",
                        kernel.name(),
                        case.tiling
                    );
                }
                checked += 1;
            }
            // (the AVX2 kernel has no row pixels: four 8-channel shapes are not its)
            assert!(checked >= 11, "{}: only {checked} shapes", kernel.name());
        }
    }

    #[test]
    fn silu_is_x_times_its_sigmoid() {
        for kernel in kernels("silu_is_x_times_its_sigmoid") {
            silu_of(kernel);
        }
    }

    fn silu_of(kernel: Kernel) {
        // A sweep past where exp(-x) overflows, both zeros, the smallest
        // normal and the extremes; 1,003 values, so a masked tail too.
        let mut x: Vec<f32> = (-500..=500).map(|i| i as f32 * 0.24).collect();
        x.extend([
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
            88.7,
            -88.7,
        ]);
        let mut got = x.clone();
        (kernel.silu)(&mut got);
        for (&x, &got) in x.iter().zip(&got) {
            let x = f64::from(x);
            let want = x / (1.0 + (-x).exp());
            assert!(
                // (below x = -88.7, exp(-x) overflows f32 and the result is
                // -0, against a true value under 1e-35)
                (f64::from(got) - want).abs() <= 1e-6 * want.abs() + 1e-35,
                "{}: silu({x}) is {got}, expected {want}",
                kernel.name()
            );
        }
        let mut nan = [f32::NAN];
        (kernel.silu)(&mut nan);
        assert!(nan[0].is_nan());
    }

    #[test]
    fn silu_activation_reaches_every_output() {
        for kernel in kernels("silu_activation_reaches_every_output") {
            silu_activation_of(kernel);
        }
    }

    fn silu_activation_of(kernel: Kernel) {
        let silu = |x: f32| f64::from(x) / (1.0 + (-f64::from(x)).exp());
        let compare = |linear: &[f32], activated: &[f32], what: &str| {
            for (i, (&l, &a)) in linear.iter().zip(activated).enumerate() {
                let want = silu(l);
                assert!(
                    (f64::from(a) - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "{what}: element {i} is {a}, expected silu({l}) = {want}"
                );
            }
        };
        // Both tilings where the kernel has them, outputs with overlapping
        // tiles.
        for shape in [(5, 16, 3, 29, 1), (5, 16, 9, 11, 2)] {
            let case = Case::new(&kernel, shape, 4).unwrap();
            let what = format!("{} {:?}", kernel.name(), case.tiling);
            let linear = case.run(&kernel, Activation::Linear);
            compare(&linear, &case.run(&kernel, Activation::Silu), &what);
        }
        // Every pointwise layout, pixel counts that leave partial tiles.
        for (channels, k, p) in [
            (Channels::First, 6, 45),
            (Channels::Last, 6, 66),
            (Channels::LastToFirst, 6, 45),
        ] {
            let weights = pack_weights_1x1(&values(64 * k, 7), k, channels);
            let (input, bias) = (values(k * p, 8), values(64, 9));
            let run = |activation| {
                let layer = PointwiseLayer {
                    channels,
                    weights: &weights,
                    bias: &bias,
                    activation,
                };
                let mut output = vec![f32::NAN; 64 * p];
                kernel.run_pointwise(&layer, &[&input], (k, p), &mut output);
                output
            };
            let what = format!("{} {channels:?}", kernel.name());
            compare(&run(Activation::Linear), &run(Activation::Silu), &what);
        }
    }

    /// A kernel for [`Kernel::tiling`] alone: row pixels or not, these
    /// output-channel tiles; it computes nothing.
    fn tiles_only(row_pixels: bool, output_channel_tiles: &'static [(usize, usize)]) -> Kernel {
        Kernel {
            name: "tiles only",
            row_pixels: row_pixels.then_some((|_, _, _, _, _| unreachable!()) as RowPixelsFn),
            output_channel_tiles,
            output_channels: |_, _, _, _, _, _| unreachable!(),
            first_blocks_per_task: 1,
            pointwise_first: |_, _, _, _, _| unreachable!(),
            pointwise_last: |_, _, _, _, _| unreachable!(),
            pointwise_last_to_first: |_, _, _, _, _| unreachable!(),
            silu: |_| unreachable!(),
        }
    }

    #[test]
    fn tilings_cover_what_they_should() {
        // As the AVX-512F kernel has them.
        let avx512 = tiles_only(true, &[(1, 14), (2, 7), (4, 3)]);
        assert_eq!(avx512.tiling(1, (28, 28)), Some(Tiling::RowPixels));
        assert_eq!(avx512.tiling(1, (27, 27)), Some(Tiling::OutputChannels));
        assert_eq!(avx512.tiling(2, (56, 56)), Some(Tiling::OutputChannels));
        assert_eq!(avx512.tiling(3, (10, 10)), None);
        // smaller than every tile
        assert_eq!(avx512.tiling(1, (2, 2)), None);
        assert_eq!(avx512.tiling(2, (3, 3)), None);
        assert_eq!(avx512.output_channel_tile((3, 7)), Some((2, 7)));
        assert_eq!(avx512.output_channel_tile((14, 14)), Some((1, 14)));
        assert_eq!(avx512.output_channel_tile((13, 27)), Some((1, 14)));
        // As the AVX2 kernel has them: no row pixels; the tile that
        // computes the fewest pixels.
        let avx2 = tiles_only(false, &[(1, 6), (2, 3), (3, 2)]);
        assert_eq!(avx2.tiling(1, (112, 112)), Some(Tiling::OutputChannels));
        assert_eq!(avx2.tiling(1, (1, 6)), Some(Tiling::OutputChannels));
        assert_eq!(avx2.tiling(1, (2, 2)), None);
        assert_eq!(avx2.output_channel_tile((112, 112)), Some((1, 6)));
        assert_eq!(avx2.output_channel_tile((14, 14)), Some((2, 3)));
        assert_eq!(avx2.output_channel_tile((7, 7)), Some((2, 3)));
        assert_eq!(avx2.output_channel_tile((9, 4)), Some((3, 2)));
        assert_eq!(tile_starts(7, 2).collect::<Vec<_>>(), [0, 2, 4, 5]);
        assert_eq!(tile_starts(28, 14).collect::<Vec<_>>(), [0, 14]);
    }

    #[test]
    fn thread_count_does_not_change_results() {
        use tract_linalg::multithread::{multithread_tract_scope, Executor};
        for kernel in kernels("thread_count_does_not_change_results") {
            for shape in [(6, 32, 9, 30, 1), (6, 32, 9, 30, 2)] {
                let case = Case::new(&kernel, shape, 1).unwrap();
                let run = |executor| {
                    let output =
                        multithread_tract_scope(executor, || case.run(&kernel, Activation::Linear));
                    output.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                let what = format!("{} {:?}", kernel.name(), case.tiling);
                let (one, two) = (run(Executor::SingleThread), run(Executor::multithread(2)));
                assert_eq!(one, two, "{what}");
            }
        }
    }

    #[test]
    fn packed_weights_put_a_tap_of_a_block_together() {
        // 16 outputs, 1 input channel: weight (o, tap) = 10 o + tap.
        let weights: Vec<f32> = (0..16)
            .flat_map(|o| (0..9).map(move |tap| (10 * o + tap) as f32))
            .collect();
        let rows = pack_weights(&weights, 1, Tiling::RowPixels);
        assert_eq!(rows[..8], [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]);
        assert_eq!(rows[8..16], [1.0, 11.0, 21.0, 31.0, 41.0, 51.0, 61.0, 71.0]);
        assert_eq!(
            rows[72..80],
            [80.0, 90.0, 100.0, 110.0, 120.0, 130.0, 140.0, 150.0]
        );
        let channels = pack_weights(&weights, 1, Tiling::OutputChannels);
        let tap_1: Vec<f32> = (0..16).map(|o| (10 * o + 1) as f32).collect();
        assert_eq!(channels[16..32], tap_1[..]);
    }

    #[test]
    fn a_nested_run_gets_its_own_padded_input_buffer() {
        with_padded_input_buffer(|outer| {
            outer.extend([1.0, 2.0]);
            with_padded_input_buffer(|inner| {
                assert!(inner.is_empty(), "the inner run got the outer one's buffer");
                inner.push(3.0);
            });
            assert_eq!(outer[..], [1.0, 2.0]);
        });
        // the thread's buffer is kept for the next run
        with_padded_input_buffer(|buffer| assert_eq!(buffer[..], [1.0, 2.0]));
    }

    #[test]
    fn padding_surrounds_each_plane_with_zeros() {
        let input: Vec<f32> = (1..=12).map(|v| v as f32).collect();
        // what an earlier, larger layer left in the buffer
        let mut padded = vec![f32::NAN; 100];
        zero_padded(&input, (2, 2, 3), &mut padded);
        #[rustfmt::skip]
        let want = [
            0., 0., 0., 0., 0.,
            0., 1., 2., 3., 0.,
            0., 4., 5., 6., 0.,
            0., 0., 0., 0., 0.,
            0., 0., 0., 0., 0.,
            0., 7., 8., 9., 0.,
            0., 10., 11., 12., 0.,
            0., 0., 0., 0., 0.,
        ];
        assert_eq!(padded, want);
    }
}
