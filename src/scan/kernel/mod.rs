//! Selective-scan kernels: the numerical core of the `SelectiveScan` op.
//!
//! [`selective_scan`] validates the inputs, cuts the problem into blocks of
//! channels and runs them on the tract executor with a [`ScanKernel`]: the
//! portable [`reference()`], or a SIMD kernel ([`best`] picks one for this CPU).
//!
//! The maths, all in f32 (see `MODEL.md`, "The selective scan"), with channel
//! `c` in group `g = c / (KD / G)`:
//!
//! ```text
//! dt[c,t]  = softplus(delta[c,t] + delta_bias[c])   (or without softplus)
//!            with delta[c,t] = sum_r dt_weight[c,r] dt_low[g,r,t] when low-rank
//! h[c,n,t] = exp(dt[c,t] A[c,n]) h[c,n,t-1] + dt[c,t] Bs[g,n,t] u[c,t],   h[.,.,-1] = 0
//! y[c,t]   = sum_n Cs[g,n,t] h[c,n,t] + D[c] u[c,t]
//! ```
//!
//! Every channel is computed by the same sequence of operations whichever
//! block or thread it lands in, so results are bit-identical at any thread
//! count.

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod approx;
#[cfg(target_arch = "aarch64")]
mod arm64;
pub mod cross_scan;
mod generic;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod lanes;
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86_64::exp_avx2;

use crate::infer::on_tract_threads;

/// Channels per parallel task. A multiple of every kernel's vector width, and
/// small enough that the real shapes (256 or 512 channels per group) give
/// dozens of tasks to balance over the cores.
const CHANNELS_PER_TASK: usize = 64;

/// States a kernel keeps on the stack per block: the contract's N (16); more
/// spill to the heap.
const INLINE_STATES: usize = 16;

/// Sizes of one selective scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanDims {
    /// B
    pub batch: usize,
    /// KD: channels, a multiple of `groups`.
    pub channels: usize,
    /// G: groups of channels sharing `Bs` and `Cs`.
    pub groups: usize,
    /// N: states per channel.
    pub state: usize,
    /// L: time steps.
    pub len: usize,
}

/// Where a scan's delta comes from. Shapes are per scan (the op's tensors) or
/// per block (the rows of a [`ChannelBlock`]'s channels and group).
#[derive(Debug, Clone, Copy)]
pub enum Delta<'a> {
    /// Given: one row of L per channel.
    Rows(&'a [f32]),
    /// Contract version 3: the dt projection done inside the scan,
    /// `delta[c, t] = sum_r weight[c, r] low[r, t]`, r from 0, as FMAs on 0.
    LowRank {
        /// One row of R per channel.
        weight: &'a [f32],
        /// R rows of L per group (per direction, for the 2-D scan).
        low: &'a [f32],
        /// R, at least 1.
        rank: usize,
    },
}

/// The op's inputs, row-major, named as in the ONNX node.
#[derive(Debug, Clone, Copy)]
pub struct ScanInputs<'a> {
    /// `u`: `[B, KD, L]`
    pub u: &'a [f32],
    /// `delta`: `[B, KD, L]`
    pub delta: &'a [f32],
    /// `A`: `[KD, N]`
    pub a: &'a [f32],
    /// `Bs`: `[B, G, N, L]`
    pub b: &'a [f32],
    /// `Cs`: `[B, G, N, L]`
    pub c: &'a [f32],
    /// `D`: `[KD]`
    pub d: &'a [f32],
    /// `delta_bias`: `[KD]`
    pub delta_bias: &'a [f32],
    /// Whether dt is `softplus(delta + delta_bias)` rather than `delta + delta_bias`.
    pub delta_softplus: bool,
}

/// Why [`selective_scan`] refused its arguments.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScanError {
    /// An input or output slice does not match the dims.
    #[error("{kind} `{name}` has {actual} elements, expected {shape} = {expected}")]
    WrongLength {
        /// "input" or "output"
        kind: &'static str,
        /// The tensor's ONNX name, e.g. `Bs`.
        name: &'static str,
        /// Its expected shape as a product of dims, e.g. `B*G*N*L`.
        shape: &'static str,
        actual: usize,
        expected: usize,
    },
    /// The channels cannot be split evenly into groups.
    #[error("{channels} channels (KD) cannot be split evenly into {groups} groups (G)")]
    ChannelsNotDivisibleByGroups { channels: usize, groups: usize },
    /// A 2-D scan asked for a number of directions the contract lacks.
    #[error(
        "{0} scan directions: the contract defines {max} (K must be 1 to {max})",
        max = cross_scan::MAX_DIRECTIONS
    )]
    Directions(usize),
    /// A low-rank delta (contract version 3) of rank 0.
    #[error("the dt projection has rank 0 (`dt_weight` dim 1): it must be at least 1")]
    NoRank,
    /// The dims describe a tensor too large to address.
    #[error("`{name}` would have {shape} elements, which overflows usize")]
    SizeOverflow {
        /// The tensor's ONNX name.
        name: &'static str,
        /// Its shape as a product of dims.
        shape: &'static str,
    },
}

/// A selective-scan implementation: one per instruction set.
pub trait ScanKernel: Send + Sync {
    /// Short name for logs and benchmark ids, e.g. `"avx2+fma"`.
    fn name(&self) -> &'static str;

    /// Channels it computes side by side (its vector width; 1 for the
    /// scalar reference): the 2-D scan gives each task this many.
    fn vector_channels(&self) -> usize;

    /// Scans every channel of `block` into `y`, row-major `[channels, L]`:
    /// writes step t's output at t, or with a traversal adds it at the
    /// pixel the step visits.
    fn scan_block(&self, block: &ChannelBlock, y: &mut [f32]);

    /// Scans a 2-D scan task's directions, `blocks[k]` direction k's block
    /// of the same channels, into `y` (`[channels, L]`, zeroed): each adds
    /// its output at the pixels it visits, in direction order.
    fn scan_directions(&self, blocks: &[ChannelBlock], y: &mut [f32]) {
        for block in blocks {
            self.scan_block(block, y);
        }
    }
}

/// The inputs of one unit of work: consecutive channels of one batch item,
/// all in the same group.
///
/// Only [`selective_scan`] builds these, after validation, so kernels may rely
/// on the shapes documented on each field and on `len > 0`.
pub struct ChannelBlock<'a> {
    /// L, at least 1.
    len: usize,
    /// N, possibly 0.
    state: usize,
    /// `[channels, L]`
    u: &'a [f32],
    /// Rows `[channels, L]`, or low-rank: weight `[channels, R]` and low
    /// `[R, L]`, the group's rows in step order.
    delta: Delta<'a>,
    /// `[channels, N]`
    a: &'a [f32],
    /// `[N, L]`, the group's `Bs`.
    b: &'a [f32],
    /// `[N, L]`, the group's `Cs`.
    c: &'a [f32],
    /// `[channels]`
    d: &'a [f32],
    /// `[channels]`
    delta_bias: &'a [f32],
    delta_softplus: bool,
    /// The 2-D scan's direction (see [`cross_scan`]): step t reads `u` and
    /// `delta` at `traversal[t]` of their rows and adds its output into `y`
    /// there. `None`: step t is position t, and its output is written.
    traversal: Option<&'a [u32]>,
}

impl ChannelBlock<'_> {
    /// The position in the rows of `u`, `delta` and `y` of step `t`.
    #[inline]
    fn position(&self, t: usize) -> usize {
        self.traversal.map_or(t, |order| order[t] as usize)
    }

    /// `channel`'s delta at step `t` (before `delta_bias`).
    #[inline]
    fn delta(&self, channel: usize, t: usize) -> f32 {
        match self.delta {
            Delta::Rows(rows) => rows[channel * self.len + self.position(t)],
            Delta::LowRank { weight, low, rank } => weight[channel * rank..][..rank]
                .iter()
                .zip(low.chunks_exact(self.len))
                .fold(0.0, |sum, (&w, low_row)| w.mul_add(low_row[t], sum)),
        }
    }
}

/// The portable scalar kernel, the yardstick for the others.
pub fn reference() -> &'static dyn ScanKernel {
    &generic::REFERENCE
}

/// The fastest kernel this CPU can run.
pub fn best() -> &'static dyn ScanKernel {
    simd_kernels().next().unwrap_or_else(reference)
}

/// Every kernel this CPU can run, the reference first.
pub fn available() -> Vec<&'static dyn ScanKernel> {
    std::iter::once(reference()).chain(simd_kernels()).collect()
}

/// The SIMD kernels this CPU has the instructions for, fastest first.
fn simd_kernels() -> impl Iterator<Item = &'static dyn ScanKernel> {
    #[cfg(target_arch = "x86_64")]
    return x86_64::detect();
    #[cfg(target_arch = "aarch64")]
    return std::iter::once(arm64::kernel());
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return std::iter::empty();
}

/// Runs the selective scan described by `dims` on `inputs` into `y`
/// (`[B, KD, L]`) with `kernel`, split across the current tract executor.
pub fn selective_scan(
    kernel: &dyn ScanKernel,
    dims: &ScanDims,
    inputs: &ScanInputs,
    y: &mut [f32],
) -> Result<(), ScanError> {
    validate(dims, inputs, y.len())?;
    if y.is_empty() {
        return Ok(());
    }
    let tasks = split_into_blocks(dims, inputs, y);
    on_tract_threads(tasks, |(block, y): (ChannelBlock, &mut [f32])| {
        kernel.scan_block(&block, y)
    });
    Ok(())
}

/// Checks that the groups divide the channels and that every slice has the
/// length its shape gives.
fn validate(dims: &ScanDims, inputs: &ScanInputs, y_len: usize) -> Result<(), ScanError> {
    let ScanDims {
        batch,
        channels,
        groups,
        state,
        len,
    } = *dims;
    if !channels.is_multiple_of(groups) {
        return Err(ScanError::ChannelsNotDivisibleByGroups { channels, groups });
    }
    let tensors: [LengthCheck; 8] = [
        (
            "input",
            "u",
            "B*KD*L",
            inputs.u.len(),
            &[batch, channels, len],
        ),
        (
            "input",
            "delta",
            "B*KD*L",
            inputs.delta.len(),
            &[batch, channels, len],
        ),
        ("input", "A", "KD*N", inputs.a.len(), &[channels, state]),
        (
            "input",
            "Bs",
            "B*G*N*L",
            inputs.b.len(),
            &[batch, groups, state, len],
        ),
        (
            "input",
            "Cs",
            "B*G*N*L",
            inputs.c.len(),
            &[batch, groups, state, len],
        ),
        ("input", "D", "KD", inputs.d.len(), &[channels]),
        (
            "input",
            "delta_bias",
            "KD",
            inputs.delta_bias.len(),
            &[channels],
        ),
        ("output", "y", "B*KD*L", y_len, &[batch, channels, len]),
    ];
    check_lengths(tensors)
}

/// One slice to check: "input" or "output", its name, its shape as a
/// product (for the message), its length, and the dims that product is of.
type LengthCheck<'a> = (&'static str, &'static str, &'static str, usize, &'a [usize]);

/// Checks that every slice has the length of the product of its dims.
fn check_lengths<const N: usize>(tensors: [LengthCheck; N]) -> Result<(), ScanError> {
    for (kind, name, shape, actual, factors) in tensors {
        let expected = factors
            .iter()
            .try_fold(1usize, |product, &factor| product.checked_mul(factor))
            .ok_or(ScanError::SizeOverflow { name, shape })?;
        if actual != expected {
            return Err(ScanError::WrongLength {
                kind,
                name,
                shape,
                actual,
                expected,
            });
        }
    }
    Ok(())
}

/// Cuts a validated, non-empty problem into blocks of at most
/// [`CHANNELS_PER_TASK`] channels of one (batch, group), each paired with the
/// disjoint part of `y` it writes.
fn split_into_blocks<'a>(
    dims: &ScanDims,
    inputs: &ScanInputs<'a>,
    y: &'a mut [f32],
) -> Vec<(ChannelBlock<'a>, &'a mut [f32])> {
    let ScanDims {
        channels,
        groups,
        state,
        len,
        ..
    } = *dims;
    let channels_per_group = channels / groups;
    let group_size = state * len;
    let blocks_per_group = channels_per_group.div_ceil(CHANNELS_PER_TASK);
    let mut blocks = Vec::with_capacity(dims.batch * groups * blocks_per_group);
    for (batch_group, group_y) in y.chunks_mut(channels_per_group * len).enumerate() {
        let (batch, group) = (batch_group / groups, batch_group % groups);
        let group_inputs = batch_group * group_size..(batch_group + 1) * group_size;
        for (task, block_y) in group_y.chunks_mut(CHANNELS_PER_TASK * len).enumerate() {
            let first = group * channels_per_group + task * CHANNELS_PER_TASK;
            let block_channels = first..first + block_y.len() / len;
            let rows = (batch * channels + block_channels.start) * len
                ..(batch * channels + block_channels.end) * len;
            let block = ChannelBlock {
                len,
                state,
                u: &inputs.u[rows.clone()],
                delta: Delta::Rows(&inputs.delta[rows]),
                a: &inputs.a[block_channels.start * state..block_channels.end * state],
                b: &inputs.b[group_inputs.clone()],
                c: &inputs.c[group_inputs.clone()],
                d: &inputs.d[block_channels.clone()],
                delta_bias: &inputs.delta_bias[block_channels],
                delta_softplus: inputs.delta_softplus,
                traversal: None,
            };
            blocks.push((block, block_y));
        }
    }
    blocks
}
