//! Everything the CUDA scan decides before its launch, as plain data that
//! needs no GPU: the kernel's source and name, its scalar arguments in
//! signature order, and its grid.
//!
//! The kernel reads the op's row-major tensors in place, so there is no
//! layout conversion: the device pointers of u, delta, A, Bs, Cs, D,
//! delta_bias and y come first, then [`ScanLaunch::scalar_args`].

use crate::scan::kernel::ScanDims;
use cudarc::driver::LaunchConfig;

/// The kernel source, compiled at run time with NVRTC.
pub const KERNEL_SOURCE: &str = include_str!("selective_scan.cu");
/// The `extern "C"` name of the kernel in [`KERNEL_SOURCE`].
pub const KERNEL_NAME: &str = "fer_edge_selective_scan";
/// Most states per channel the kernel keeps in registers (`MAX_STATE` in the
/// source); the model has N = 16.
pub const MAX_STATE: usize = 16;
/// Threads, one per channel, in a block: two warps, so the model's 256 or
/// 512 channels per group give 4 to 8 blocks per group to spread over the
/// GPU's multiprocessors.
pub const CHANNELS_PER_BLOCK: usize = 64;
/// The most blocks a launch may have along the grid's `y` (groups) and `z`
/// (batch) axes.
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

/// One validated launch of the scan kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanLaunch {
    /// Blocks along x (channel blocks of a group), y (groups), z (batch).
    pub grid: (u32, u32, u32),
    /// Threads per block, one per channel.
    pub block: u32,
    /// The kernel's `int` arguments after the pointers: channels, groups,
    /// state, len, delta_softplus.
    pub scalar_args: [i32; 5],
}

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
        if state > MAX_STATE {
            return Err(LaunchError::TooManyStates(state));
        }
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(LaunchError::ChannelsNotDivisibleByGroups { channels, groups });
        }
        let tensors = [
            ("u", [batch, channels, len, 1]),
            ("Bs", [batch, groups, state, len]),
            ("A", [channels, state, 1, 1]),
        ];
        for (name, factors) in tensors {
            let elements = factors.iter().map(|&f| f as u128).product::<u128>();
            if elements > i32::MAX as u128 {
                return Err(LaunchError::TooLarge { name, elements });
            }
        }
        for (what, count) in [("G (groups)", groups), ("B (batch)", batch)] {
            if count > MAX_GRID_YZ {
                return Err(LaunchError::GridTooLarge { what, count });
            }
        }
        // Each fits in i32: every one is a factor of a tensor checked above.
        let int = |value: usize| value as i32;
        let channel_blocks = (channels / groups).div_ceil(CHANNELS_PER_BLOCK);
        Ok(ScanLaunch {
            grid: (channel_blocks as u32, groups as u32, batch as u32),
            block: CHANNELS_PER_BLOCK as u32,
            scalar_args: [
                int(channels),
                int(groups),
                int(state),
                int(len),
                i32::from(delta_softplus),
            ],
        })
    }

    /// The grid and block for cudarc (no dynamic shared memory).
    pub fn config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: self.grid,
            block_dim: (self.block, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}
