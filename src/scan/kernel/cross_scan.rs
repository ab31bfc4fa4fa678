//! The 2-D selective scan of `SelectiveScan2D` (contract version 2,
//! docs/model-contract.md): the K directions in which SS2D walks an H x W
//! grid, and the scan that walks them over the feature map as it lies,
//! adding every direction's output onto the pixels it came from.
//!
//! Each task is one batch item and one vector block of channels (the
//! kernel's [`vector_channels`](ScanKernel::vector_channels)), and runs the
//! K directions one after the other into the same output rows, so the
//! channels' `u` stays in cache across directions and every output value is
//! the same sum, in the same order (direction 0 first), at any thread count.
//! `Bs`, `Cs` and version 3's `dt_low` are put in each direction's step order
//! once per call (they are shared by all channels); `u` and a given `delta`
//! are read, and `y` written, through the traversal (the SIMD kernels put
//! the task's `u` and `y` in lanes once for all its directions,
//! [`ScanKernel::scan_directions`]). The traversals and those
//! reordered copies live in a scratch kept for the process: a warm scan
//! allocates only its list of tasks.

use std::ops::Range;
use std::sync::{Mutex, TryLockError};

use smallvec::SmallVec;

use super::{ChannelBlock, Delta, ScanError, ScanKernel};
use crate::infer::on_tract_threads;

/// Directions the contract defines (MODEL.md's k0..k7).
pub const MAX_DIRECTIONS: usize = 8;

/// Grids whose traversals the scratch keeps; past that it starts afresh (a
/// model has one grid per stage, so only model reloads at new sizes add more).
const MAX_KEPT_GRIDS: usize = 16;

/// What [`selective_scan_2d`] keeps across calls.
#[derive(Default)]
struct GridScratch {
    traversals: KeptTraversals,
    /// `Bs` in each direction's step order.
    b_steps: Vec<f32>,
    /// `Cs` in each direction's step order.
    c_steps: Vec<f32>,
    /// Version 3's `dt_low` in each direction's step order.
    low_steps: Vec<f32>,
}

/// Per grid met: its height, width, and its first directions' traversals.
#[derive(Default)]
struct KeptTraversals(Vec<(usize, usize, Vec<Vec<u32>>)>);

impl KeptTraversals {
    /// The traversals of directions `0..directions` on an H x W grid,
    /// computed the first time they are asked for.
    fn get(&mut self, directions: usize, height: usize, width: usize) -> &[Vec<u32>] {
        let kept = self
            .0
            .iter()
            .position(|&(h, w, _)| (h, w) == (height, width));
        let index = kept.unwrap_or_else(|| {
            if self.0.len() == MAX_KEPT_GRIDS {
                self.0.clear();
            }
            self.0.push((height, width, Vec::new()));
            self.0.len() - 1
        });
        let orders = &mut self.0[index].2;
        while orders.len() < directions {
            orders.push(traversal(orders.len(), height, width));
        }
        &orders[..directions]
    }
}

/// The scratch of the process, not of a thread: the plan runs on whichever
/// tract worker is free, and one buffer per worker would be warmed (and grow
/// the heap) the first time each worker runs a frame. Frames run one at a
/// time; a scan running beside another works in a fresh scratch.
static SCRATCH: Mutex<GridScratch> = Mutex::new(GridScratch {
    traversals: KeptTraversals(Vec::new()),
    b_steps: Vec::new(),
    c_steps: Vec::new(),
    low_steps: Vec::new(),
});

/// Runs `f` with the process's [`SCRATCH`], or a fresh one while it is taken.
/// A panic that poisoned it left only scratch behind, which `f` overwrites.
fn with_grid_scratch<R>(f: impl FnOnce(&mut GridScratch) -> R) -> R {
    match SCRATCH.try_lock() {
        Ok(mut kept) => f(&mut kept),
        Err(TryLockError::Poisoned(poisoned)) => f(&mut poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => f(&mut GridScratch::default()),
    }
}

/// Sizes of one 2-D selective scan: `usize`, or the op's symbolic dims
/// while tract types the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GridDims<D = usize> {
    /// B
    pub batch: D,
    /// Di: channels of the feature map.
    pub channels: D,
    /// K: directions, 1 to [`MAX_DIRECTIONS`].
    pub directions: D,
    /// N: states per channel.
    pub state: D,
    /// H
    pub height: D,
    /// W
    pub width: D,
}

/// The op's inputs, row-major, named as in the ONNX node.
#[derive(Debug, Clone, Copy)]
pub struct GridInputs<'a> {
    /// `u`: `[B, Di, H, W]`
    pub u: &'a [f32],
    /// `delta`: `[B, K, Di, H, W]` (version 2), or version 3's low rank:
    /// `dt_weight` `[K*Di, R]` and `dt_low` `[B, K, R, H, W]`.
    pub delta: Delta<'a>,
    /// `A`: `[K*Di, N]`
    pub a: &'a [f32],
    /// `Bs`: `[B, K, N, H, W]`
    pub b: &'a [f32],
    /// `Cs`: `[B, K, N, H, W]`
    pub c: &'a [f32],
    /// `D`: `[K*Di]`
    pub d: &'a [f32],
    /// `delta_bias`: `[K*Di]`
    pub delta_bias: &'a [f32],
    /// Whether dt is `softplus(delta + delta_bias)`.
    pub delta_softplus: bool,
}

/// The pixels (flat index `h*W + w`) direction `k` visits, step by step:
/// k0 row-major; k1 column-major; k2, k3 their reverses; k4 the diagonal
/// `(h, (h + w) mod W)` read column by column; k5 the anti-diagonal
/// `(h, (w - h) mod W)` likewise; k6, k7 their reverses.
pub fn traversal(k: usize, height: usize, width: usize) -> Vec<u32> {
    assert!(
        k < MAX_DIRECTIONS,
        "direction {k}: the contract defines 0 to 7"
    );
    let column_major = |column: fn(usize, usize, usize) -> usize| -> Vec<u32> {
        (0..width)
            .flat_map(|w| (0..height).map(move |h| (h * width + column(h, w, width)) as u32))
            .collect()
    };
    let forward: Vec<u32> = match k {
        0 | 2 => (0..(height * width) as u32).collect(),
        1 | 3 => column_major(|_, w, _| w),
        4 | 6 => column_major(|h, w, width| (h + w) % width),
        _ => column_major(|h, w, width| (w + width - h % width) % width),
    };
    if matches!(k, 2 | 3 | 6 | 7) {
        forward.into_iter().rev().collect()
    } else {
        forward
    }
}

/// Runs the 2-D selective scan described by `dims` on `inputs` into `y`
/// (`[B, Di, H, W]`, overwritten) with `kernel`, split across the current
/// tract executor.
pub fn selective_scan_2d(
    kernel: &dyn ScanKernel,
    dims: &GridDims,
    inputs: &GridInputs,
    y: &mut [f32],
) -> Result<(), ScanError> {
    validate(dims, inputs, y.len())?;
    let GridDims {
        channels,
        directions,
        state,
        height,
        width,
        ..
    } = *dims;
    let len = height * width;
    if len == 0 || channels == 0 {
        return Ok(());
    }
    with_grid_scratch(|scratch| {
        let GridScratch {
            traversals,
            b_steps,
            c_steps,
            low_steps,
        } = scratch;
        let traversals = traversals.get(directions, height, width);
        let reordered = GridInputs {
            b: in_step_order(inputs.b, traversals, state, len, b_steps),
            c: in_step_order(inputs.c, traversals, state, len, c_steps),
            delta: match inputs.delta {
                Delta::Rows(rows) => Delta::Rows(rows),
                Delta::LowRank { weight, low, rank } => Delta::LowRank {
                    weight,
                    low: in_step_order(low, traversals, rank, len, low_steps),
                    rank,
                },
            },
            ..*inputs
        };
        // One vector block per task, so that the thin SS2D blocks of the small
        // variants (64 channels) still give every core work.
        let channels_per_task = kernel.vector_channels();
        let tasks_per_item = channels.div_ceil(channels_per_task);
        let mut tasks = Vec::with_capacity(dims.batch * tasks_per_item);
        for (item, item_y) in y.chunks_mut(channels * len).enumerate() {
            for (task, task_y) in item_y.chunks_mut(channels_per_task * len).enumerate() {
                let first = task * channels_per_task;
                tasks.push((item, first..first + task_y.len() / len, task_y));
            }
        }
        on_tract_threads(
            tasks,
            |(item, rows, y): (usize, Range<usize>, &mut [f32])| {
                y.fill(0.0);
                let blocks: SmallVec<[ChannelBlock; MAX_DIRECTIONS]> = traversals
                    .iter()
                    .enumerate()
                    .map(|(k, order)| {
                        direction_block(dims, &reordered, item, k, rows.clone(), order)
                    })
                    .collect();
                kernel.scan_directions(&blocks, y);
            },
        );
    });
    Ok(())
}

/// The block of direction `k` for the channels `rows` of batch item `item`,
/// with `inputs`' `Bs`, `Cs` and `dt_low` already in step order.
fn direction_block<'a>(
    dims: &GridDims,
    inputs: &GridInputs<'a>,
    item: usize,
    k: usize,
    rows: Range<usize>,
    order: &'a [u32],
) -> ChannelBlock<'a> {
    let GridDims {
        channels,
        directions,
        state,
        ..
    } = *dims;
    let len = dims.height * dims.width;
    let params = k * channels + rows.start..k * channels + rows.end;
    let direction = item * directions + k;
    let group = direction * state * len;
    let delta = match inputs.delta {
        Delta::Rows(delta) => {
            Delta::Rows(&delta[(direction * channels + rows.start) * len..][..rows.len() * len])
        }
        Delta::LowRank { weight, low, rank } => Delta::LowRank {
            weight: &weight[params.start * rank..params.end * rank],
            low: &low[direction * rank * len..][..rank * len],
            rank,
        },
    };
    ChannelBlock {
        len,
        state,
        u: &inputs.u[(item * channels + rows.start) * len..][..rows.len() * len],
        delta,
        a: &inputs.a[params.start * state..params.end * state],
        b: &inputs.b[group..group + state * len],
        c: &inputs.c[group..group + state * len],
        d: &inputs.d[params.clone()],
        delta_bias: &inputs.delta_bias[params],
        delta_softplus: inputs.delta_softplus,
        traversal: Some(order),
    }
}

/// `[B, K, rows_per_direction, L]` rows of pixels -> the same rows in each
/// direction's step order (`out[b, k, n, t] = rows[b, k, n, traversal_k[t]]`),
/// written over the start of `buffer`, which grows to fit if it is shorter.
fn in_step_order<'a>(
    rows: &[f32],
    traversals: &[Vec<u32>],
    rows_per_direction: usize,
    len: usize,
    buffer: &'a mut Vec<f32>,
) -> &'a [f32] {
    if buffer.len() < rows.len() {
        buffer.resize(rows.len(), 0.0);
    }
    let out = &mut buffer[..rows.len()];
    let row_pairs = rows.chunks_exact(len).zip(out.chunks_exact_mut(len));
    for (index, (row, out_row)) in row_pairs.enumerate() {
        let direction = (index / rows_per_direction) % traversals.len();
        for (value, &pixel) in out_row.iter_mut().zip(&traversals[direction]) {
            *value = row[pixel as usize];
        }
    }
    out
}

/// Checks K and that every slice has the length its shape gives.
fn validate(dims: &GridDims, inputs: &GridInputs, y_len: usize) -> Result<(), ScanError> {
    let GridDims {
        batch,
        channels,
        directions,
        state,
        height,
        width,
    } = *dims;
    if !(1..=MAX_DIRECTIONS).contains(&directions) {
        return Err(ScanError::Directions(directions));
    }
    if u32::try_from(height.saturating_mul(width)).is_err() {
        return Err(ScanError::SizeOverflow {
            name: "u",
            shape: "H*W",
        });
    }
    let k_channels = directions.saturating_mul(channels);
    match inputs.delta {
        Delta::Rows(delta) => super::check_lengths([(
            "input",
            "delta",
            "B*K*Di*H*W",
            delta.len(),
            &[batch, directions, channels, height, width],
        )])?,
        Delta::LowRank { weight, low, rank } => {
            if rank == 0 {
                return Err(ScanError::NoRank);
            }
            super::check_lengths([
                (
                    "input",
                    "dt_low",
                    "B*K*R*H*W",
                    low.len(),
                    &[batch, directions, rank, height, width],
                ),
                (
                    "input",
                    "dt_weight",
                    "K*Di*R",
                    weight.len(),
                    &[k_channels, rank],
                ),
            ])?
        }
    }
    super::check_lengths([
        (
            "input",
            "u",
            "B*Di*H*W",
            inputs.u.len(),
            &[batch, channels, height, width],
        ),
        ("input", "A", "K*Di*N", inputs.a.len(), &[k_channels, state]),
        (
            "input",
            "Bs",
            "B*K*N*H*W",
            inputs.b.len(),
            &[batch, directions, state, height, width],
        ),
        (
            "input",
            "Cs",
            "B*K*N*H*W",
            inputs.c.len(),
            &[batch, directions, state, height, width],
        ),
        ("input", "D", "K*Di", inputs.d.len(), &[k_channels]),
        (
            "input",
            "delta_bias",
            "K*Di",
            inputs.delta_bias.len(),
            &[k_channels],
        ),
        (
            "output",
            "y",
            "B*Di*H*W",
            y_len,
            &[batch, channels, height, width],
        ),
    ])
}
