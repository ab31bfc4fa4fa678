//! Everything the CUDA scans decide before their launches, as plain data
//! that needs no GPU: the kernels' source and names, their scalar arguments
//! in signature order, and their grids.
//!
//! The kernels read the ops' row-major tensors in place, so there is no
//! layout conversion: each takes the device pointers of its inputs and its
//! output first, then [`KernelLaunch::scalar_args`]. `SelectiveScan` is one
//! launch ([`ScanLaunch`]): u, delta, A, Bs, Cs, D, delta_bias, y.
//! `SelectiveScan2D` is two ([`Scan2dLaunch`]): the scan of every direction
//! into a scratch tensor shaped as version 2's delta (u, delta, A, Bs, Cs,
//! D, delta_bias, partial; in version 3 u, dt_low, dt_weight, A, Bs, Cs, D,
//! delta_bias, partial), then the sum over the directions (partial, y).

use crate::scan::kernel::cross_scan::{GridDims, MAX_DIRECTIONS};
use crate::scan::kernel::ScanDims;
use cudarc::driver::LaunchConfig;

/// The kernels' source, compiled at run time with NVRTC as one module.
pub const KERNEL_SOURCE: &str = include_str!("selective_scan.cu");
/// The `extern "C"` name of `SelectiveScan`'s kernel in [`KERNEL_SOURCE`].
pub const KERNEL_NAME: &str = "fer_edge_selective_scan";
/// The `extern "C"` name of `SelectiveScan2D`'s scan kernel (version 2).
pub const KERNEL_2D_NAME: &str = "fer_edge_selective_scan_2d";
/// The `extern "C"` name of `SelectiveScan2D`'s scan kernel in version 3's
/// form, which projects delta from dt_low and dt_weight.
pub const KERNEL_2D_LOW_RANK_NAME: &str = "fer_edge_selective_scan_2d_low_rank";
/// The `extern "C"` name of `SelectiveScan2D`'s sum over the directions.
pub const MERGE_KERNEL_NAME: &str = "fer_edge_merge_directions";
/// Most states per channel the kernels keep in registers (`MAX_STATE` in the
/// source); the model has N = 16.
pub const MAX_STATE: usize = 16;
/// Threads, one per channel, in a scan kernel's block: two warps, so the
/// model's 256 or 512 channels per group (or direction) give 4 to 8 blocks
/// per group to spread over the GPU's multiprocessors.
pub const CHANNELS_PER_BLOCK: usize = 64;
/// Threads, one per output value, in a block of the directions' sum.
pub const OUTPUTS_PER_BLOCK: usize = 256;
/// The most blocks a launch may have along the grid's `y` and `z` axes.
const MAX_GRID_YZ: usize = 65_535;

/// Why a scan cannot be launched on the GPU.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LaunchError {
    /// More states than the kernel keeps in registers.
    #[error("the CUDA scan keeps at most {MAX_STATE} states per channel, this scan has N = {0}")]
    TooManyStates(usize),
    /// The channels do not split evenly into groups.
    #[error("{channels} channels (KD) cannot be split evenly into {groups} groups (G)")]
    ChannelsNotDivisibleByGroups { channels: usize, groups: usize },
    /// A 2-D scan with a number of directions the contract lacks.
    #[error("the CUDA 2-D scan walks 1 to {MAX_DIRECTIONS} directions (K), this scan has K = {0}")]
    Directions(usize),
    /// A tensor too large for the kernel's 32-bit indices.
    #[error(
        "`{name}` has {elements} elements, more than the CUDA scan's 32-bit indices reach ({})",
        i32::MAX
    )]
    TooLarge { name: &'static str, elements: u128 },
    /// More groups or batch items than a grid axis holds.
    #[error("{what} = {count} is more than a CUDA grid axis holds ({MAX_GRID_YZ})")]
    GridTooLarge { what: &'static str, count: usize },
}

/// One launch of a kernel: its grid, its block, and its `INTS` int
/// arguments after the pointers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLaunch<const INTS: usize> {
    /// Blocks along x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block, along x.
    pub block: u32,
    /// The kernel's `int` arguments, in signature order.
    pub scalar_args: [i32; INTS],
}

impl<const INTS: usize> KernelLaunch<INTS> {
    /// The grid and block for cudarc (no dynamic shared memory).
    pub fn config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: self.grid,
            block_dim: (self.block, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// One validated launch of `SelectiveScan`'s kernel. Grid: x = blocks of
/// [`CHANNELS_PER_BLOCK`] channels of a group, y = groups, z = batch items;
/// ints: channels, groups, state, len, delta_softplus.
pub type ScanLaunch = KernelLaunch<5>;

impl ScanLaunch {
    /// Checks that the kernel can run `dims` and sizes its grid.
    pub fn new(dims: &ScanDims, delta_softplus: bool) -> Result<ScanLaunch, LaunchError> {
        let ScanDims {
            batch,
            channels,
            groups,
            state,
            len,
        } = *dims;
        check_state(state)?;
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(LaunchError::ChannelsNotDivisibleByGroups { channels, groups });
        }
        check_indices([
            ("u", &[batch, channels, len]),
            ("Bs", &[batch, groups, state, len]),
            ("A", &[channels, state]),
        ])?;
        check_grid([("G (groups)", groups), ("B (batch)", batch)])?;
        // Each fits in i32: every one is a factor of a tensor checked above.
        Ok(ScanLaunch {
            grid: (
                blocks(channels / groups, CHANNELS_PER_BLOCK),
                groups as u32,
                batch as u32,
            ),
            block: CHANNELS_PER_BLOCK as u32,
            scalar_args: [
                channels as i32,
                groups as i32,
                state as i32,
                len as i32,
                i32::from(delta_softplus),
            ],
        })
    }
}

/// The first launch of a `SelectiveScan2D` run: every (batch item,
/// direction, channel) scanned into its own row of `partial`. Grid: x =
/// blocks of [`CHANNELS_PER_BLOCK`] channels, y = directions, z = batch
/// items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan2dPass {
    /// Version 2, [`KERNEL_2D_NAME`]; ints: channels, directions, state,
    /// height, width, delta_softplus.
    Rows(KernelLaunch<6>),
    /// Version 3, [`KERNEL_2D_LOW_RANK_NAME`]; ints: channels, directions,
    /// state, rank, height, width, delta_softplus.
    LowRank(KernelLaunch<7>),
}

/// One validated run of `SelectiveScan2D` on the GPU: two launches, in
/// order, on the same stream, through a scratch tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan2dLaunch {
    /// The scan of every direction into `partial`.
    pub scan: Scan2dPass,
    /// [`MERGE_KERNEL_NAME`]: `y` = the sum of `partial` over the
    /// directions. Grid: x = blocks of [`OUTPUTS_PER_BLOCK`] of one item's
    /// Di*H*W outputs, z = batch items; ints: directions, Di*H*W.
    pub merge: KernelLaunch<2>,
    /// The shape of `partial`, the scan's output and the sum's input:
    /// `[B, K, Di, H, W]`, delta's.
    pub partial_shape: [usize; 5],
}

impl Scan2dLaunch {
    /// Checks that the kernels can run `dims` (with `rank` R, version 3's
    /// form, or without, version 2's) and sizes their grids.
    pub fn new(
        dims: &GridDims,
        rank: Option<usize>,
        delta_softplus: bool,
    ) -> Result<Scan2dLaunch, LaunchError> {
        let GridDims {
            batch,
            channels,
            directions,
            state,
            height,
            width,
        } = *dims;
        check_state(state)?;
        if !(1..=MAX_DIRECTIONS).contains(&directions) {
            return Err(LaunchError::Directions(directions));
        }
        let partial_shape = [batch, directions, channels, height, width];
        // delta (and partial) is the largest of u, delta, y and partial.
        let r = rank.unwrap_or(0);
        check_indices([
            ("delta", &partial_shape[..]),
            ("Bs", &[batch, directions, state, height, width]),
            ("A", &[directions, channels, state]),
            ("dt_low", &[batch, directions, r, height, width]),
            ("dt_weight", &[directions, channels, r]),
        ])?;
        check_grid([("B (batch)", batch)])?;
        // Each fits in i32: every one is a factor of a tensor checked above.
        let [channels, directions, state, r, height, width] =
            [channels, directions, state, r, height, width].map(|n| n as i32);
        let softplus = i32::from(delta_softplus);
        let grid = (
            blocks(channels as usize, CHANNELS_PER_BLOCK),
            directions as u32,
            batch as u32,
        );
        let block = CHANNELS_PER_BLOCK as u32;
        let scan = match rank {
            None => Scan2dPass::Rows(KernelLaunch {
                grid,
                block,
                scalar_args: [channels, directions, state, height, width, softplus],
            }),
            Some(_) => Scan2dPass::LowRank(KernelLaunch {
                grid,
                block,
                scalar_args: [channels, directions, state, r, height, width, softplus],
            }),
        };
        let item_len = (channels * height * width) as usize;
        Ok(Scan2dLaunch {
            scan,
            merge: KernelLaunch {
                grid: (blocks(item_len, OUTPUTS_PER_BLOCK), 1, batch as u32),
                block: OUTPUTS_PER_BLOCK as u32,
                scalar_args: [directions, item_len as i32],
            },
            partial_shape,
        })
    }
}

/// Blocks of `per_block` threads that cover `count` (at most `i32::MAX`).
/// None for 0: the ops launch nothing for an empty output.
fn blocks(count: usize, per_block: usize) -> u32 {
    count.div_ceil(per_block) as u32
}

fn check_state(state: usize) -> Result<(), LaunchError> {
    if state > MAX_STATE {
        return Err(LaunchError::TooManyStates(state));
    }
    Ok(())
}

/// Checks that every tensor, named with its dims, has at most `i32::MAX`
/// elements, so that every index into it fits the kernels' ints.
fn check_indices<const N: usize>(
    tensors: [(&'static str, &[usize]); N],
) -> Result<(), LaunchError> {
    for (name, factors) in tensors {
        let elements = factors.iter().map(|&f| f as u128).product::<u128>();
        if elements > i32::MAX as u128 {
            return Err(LaunchError::TooLarge { name, elements });
        }
    }
    Ok(())
}

/// Checks the counts that go on a grid's `y` or `z` axis.
fn check_grid<const N: usize>(axes: [(&'static str, usize); N]) -> Result<(), LaunchError> {
    for (what, count) in axes {
        if count > MAX_GRID_YZ {
            return Err(LaunchError::GridTooLarge { what, count });
        }
    }
    Ok(())
}
