//! The CUDA selective scans (`--features cuda`), of every contract version.
//!
//! Without a GPU: the launch arguments against the kernels' signatures, the
//! grid sizing, the refusals, the rewrite that puts the scans on the GPU in
//! a translated model, and the kernel source itself, compiled as C++ with a
//! small shim and run block by block on the CPU against the reference (the
//! 1-D scan's and the 2-D scan's, with delta given or, in version 3's form,
//! projected by the kernel).
//! With a GPU: the whole CUDA plan of a one-scan model against the reference
//! (skipped, loudly, when no GPU is usable).
#![cfg(feature = "cuda")]

use fer_edge::device::Device;
use fer_edge::scan::cuda::launch::{
    KernelLaunch, LaunchError, Scan2dLaunch, Scan2dPass, ScanLaunch, CHANNELS_PER_BLOCK,
    KERNEL_2D_LOW_RANK_NAME, KERNEL_2D_NAME, KERNEL_NAME, KERNEL_SOURCE, MAX_STATE,
    MERGE_KERNEL_NAME, OUTPUTS_PER_BLOCK,
};
use fer_edge::scan::cuda::{run_scans_on_gpu, CudaSelectiveScan, CudaSelectiveScan2D};
use fer_edge::scan::kernel::cross_scan::{selective_scan_2d, GridDims, GridInputs};
use fer_edge::scan::kernel::{reference, Delta, ScanDims};
use fer_edge::scan::op::{SelectiveScan, SelectiveScan2D};
use std::path::PathBuf;
use std::process::Command;
use tract_core::internal::*;
use tract_gpu::fact::DeviceTypedFactExt;
use tract_gpu::sync::{DeviceSync, DeviceSyncKind};

mod common;
#[path = "common/projection.rs"]
mod projection;
#[path = "common/scan_problem.rs"]
mod scan_problem;
use projection::Projection;
use scan_problem::{dims, Problem, Ranges, SLOW, STIFF, TYPICAL};

/// 2-D scan dimensions, positionally: batch, channels (Di), directions (K),
/// state (N), height, width.
fn grid(
    batch: usize,
    channels: usize,
    directions: usize,
    state: usize,
    height: usize,
    width: usize,
) -> GridDims {
    GridDims {
        batch,
        channels,
        directions,
        state,
        height,
        width,
    }
}

/// A random 2-D scan: the inputs of version 1's scan of the same
/// cross-scan (K groups of Di channels, L = H*W), whose delta, A, Bs, Cs, D
/// and delta_bias have the sizes version 2's have, with u cut to the one
/// copy version 2 takes; in version 3's form, a dt projection in place of
/// delta.
struct GridProblem {
    dims: GridDims,
    data: Problem,
    projection: Option<Projection>,
}

impl GridProblem {
    fn random(dims: GridDims, delta_softplus: bool, ranges: Ranges, seed: u64) -> GridProblem {
        let GridDims {
            batch,
            channels,
            directions,
            state,
            height,
            width,
        } = dims;
        let len = height * width;
        let as_version_1 = scan_problem::dims(batch, directions * channels, directions, state, len);
        let mut data = Problem::random(as_version_1, delta_softplus, ranges, seed);
        data.u.truncate(batch * channels * len);
        GridProblem {
            dims,
            data,
            projection: None,
        }
    }

    /// As [`GridProblem::random`], in version 3's form with rank R = `rank`.
    fn random_low_rank(
        dims: GridDims,
        rank: usize,
        delta_softplus: bool,
        ranges: Ranges,
        seed: u64,
    ) -> GridProblem {
        let projection = Projection::random(&dims, rank, seed + 1000);
        GridProblem {
            projection: Some(projection),
            ..GridProblem::random(dims, delta_softplus, ranges, seed)
        }
    }

    /// R, in version 3's form.
    fn rank(&self) -> Option<usize> {
        self.projection.as_ref().map(|p| p.rank)
    }

    fn launch(&self) -> Scan2dLaunch {
        Scan2dLaunch::new(&self.dims, self.rank(), self.data.delta_softplus).unwrap()
    }

    fn inputs(&self) -> GridInputs<'_> {
        let data = &self.data;
        GridInputs {
            u: &data.u,
            delta: match &self.projection {
                Some(projection) => projection.as_delta(),
                None => Delta::Rows(&data.delta),
            },
            a: &data.a,
            b: &data.b,
            c: &data.c,
            d: &data.d,
            delta_bias: &data.delta_bias,
            delta_softplus: data.delta_softplus,
        }
    }

    fn output_len(&self) -> usize {
        let GridDims {
            batch,
            channels,
            height,
            width,
            ..
        } = self.dims;
        batch * channels * height * width
    }

    /// y from the CPU reference kernel.
    fn reference(&self) -> Vec<f32> {
        let mut y = vec![f32::NAN; self.output_len()];
        selective_scan_2d(reference(), &self.dims, &self.inputs(), &mut y).expect("valid problem");
        y
    }
}

/// The parameters (type, name) of kernel `name`'s signature in
/// `KERNEL_SOURCE`, in order.
fn kernel_parameters(name: &str) -> Vec<(String, String)> {
    let signature = KERNEL_SOURCE
        .split(&format!("void {name}("))
        .nth(1)
        .expect("the kernel's signature")
        .split(')')
        .next()
        .unwrap();
    signature
        .split(',')
        .map(|parameter| {
            let words: Vec<&str> = parameter.split_whitespace().collect();
            let name = words.last().unwrap().to_string();
            (words[..words.len() - 1].join(" "), name)
        })
        .collect()
}

#[test]
fn arguments_follow_the_kernel_signature() {
    let parameters = kernel_parameters(KERNEL_NAME);
    let pointers: Vec<&str> = parameters[..8].iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        pointers,
        ["u", "delta", "a", "bs", "cs", "d", "delta_bias", "y"],
        "the op pushes the 7 inputs in ONNX order, then y"
    );
    assert!(parameters[..7]
        .iter()
        .all(|(ty, _)| ty == "const float* __restrict__"));
    assert_eq!(parameters[7].0, "float* __restrict__");
    let ints: Vec<(&str, &str)> = parameters[8..]
        .iter()
        .map(|(t, n)| (t.as_str(), n.as_str()))
        .collect();
    assert_eq!(
        ints,
        [
            ("int", "channels"),
            ("int", "groups"),
            ("int", "state"),
            ("int", "len"),
            ("int", "delta_softplus")
        ]
    );
    let launch = ScanLaunch::new(&dims(2, 96, 3, 16, 50), true).unwrap();
    assert_eq!(launch.scalar_args, [96, 3, 16, 50, 1]);
    let launch = ScanLaunch::new(&dims(1, 8, 2, 4, 7), false).unwrap();
    assert_eq!(launch.scalar_args, [8, 2, 4, 7, 0]);
    assert!(KERNEL_SOURCE.contains(&format!("#define MAX_STATE {MAX_STATE}\n")));
}

#[test]
fn grid_covers_every_channel_of_every_group_and_batch_item() {
    // The model's shapes (KD = 2048 or 4096 in 8 groups), and ragged ones.
    let cases = [
        (dims(1, 2048, 8, 16, 1600), (4, 8, 1)),
        (dims(1, 4096, 8, 16, 400), (8, 8, 1)),
        (dims(3, 8 * 65, 8, 16, 9), (2, 8, 3)),
        (dims(2, 12, 4, 1, 5), (1, 4, 2)),
    ];
    for (dims, grid) in cases {
        let launch = ScanLaunch::new(&dims, true).unwrap();
        assert_eq!(launch.grid, grid, "{dims:?}");
        assert_eq!(launch.block as usize, CHANNELS_PER_BLOCK);
        let threads = launch.grid.0 as usize * CHANNELS_PER_BLOCK;
        let per_group = dims.channels / dims.groups;
        assert!(threads >= per_group && threads - per_group < CHANNELS_PER_BLOCK);
        let config = launch.config();
        assert_eq!(config.grid_dim, launch.grid);
        assert_eq!(config.block_dim, (launch.block, 1, 1));
        assert_eq!(config.shared_mem_bytes, 0);
    }
}

#[test]
fn launch_refuses_what_the_kernel_cannot_run() {
    assert_eq!(
        ScanLaunch::new(&dims(1, 8, 2, MAX_STATE + 1, 4), true),
        Err(LaunchError::TooManyStates(MAX_STATE + 1))
    );
    assert_eq!(
        ScanLaunch::new(&dims(1, 9, 2, 4, 4), true),
        Err(LaunchError::ChannelsNotDivisibleByGroups {
            channels: 9,
            groups: 2
        })
    );
    assert_eq!(
        ScanLaunch::new(&dims(1, 8, 0, 4, 4), true),
        Err(LaunchError::ChannelsNotDivisibleByGroups {
            channels: 8,
            groups: 0
        })
    );
    let err = ScanLaunch::new(&dims(1, 4096, 8, 16, 1 << 20), true).unwrap_err();
    assert_eq!(
        err,
        LaunchError::TooLarge {
            name: "u",
            elements: 1 << 32
        }
    );
    assert!(err.to_string().contains("32-bit indices"), "{err}");
    assert_eq!(
        ScanLaunch::new(&dims(70_000, 8, 8, 1, 1), true),
        Err(LaunchError::GridTooLarge {
            what: "B (batch)",
            count: 70_000
        })
    );
}

#[test]
fn arguments_follow_the_2d_kernels_signatures() {
    let names = |parameters: &[(String, String)]| -> Vec<String> {
        parameters.iter().map(|(_, name)| name.clone()).collect()
    };
    let types = |parameters: &[(String, String)]| -> Vec<String> {
        parameters.iter().map(|(ty, _)| ty.clone()).collect()
    };
    let scan = kernel_parameters(KERNEL_2D_NAME);
    assert_eq!(
        names(&scan),
        [
            "u",
            "delta",
            "a",
            "bs",
            "cs",
            "d",
            "delta_bias",
            "partial",
            "channels",
            "directions",
            "state",
            "height",
            "width",
            "delta_softplus"
        ],
        "the op pushes the 7 inputs in ONNX order, then partial, then the launch's ints"
    );
    let mut want = vec!["const float* __restrict__"; 7];
    want.push("float* __restrict__");
    want.extend(["int"; 6]);
    assert_eq!(types(&scan), want);
    let low_rank = kernel_parameters(KERNEL_2D_LOW_RANK_NAME);
    assert_eq!(
        names(&low_rank),
        [
            "u",
            "dt_low",
            "dt_weight",
            "a",
            "bs",
            "cs",
            "d",
            "delta_bias",
            "partial",
            "channels",
            "directions",
            "state",
            "rank",
            "height",
            "width",
            "delta_softplus"
        ],
        "the op pushes version 3's 8 inputs in ONNX order, then partial, then the launch's ints"
    );
    let mut want = vec!["const float* __restrict__"; 8];
    want.push("float* __restrict__");
    want.extend(["int"; 7]);
    assert_eq!(types(&low_rank), want);
    let merge = kernel_parameters(MERGE_KERNEL_NAME);
    assert_eq!(
        names(&merge),
        ["partial", "y", "directions", "item_len"],
        "the op pushes partial, then y, then the launch's ints"
    );
    assert_eq!(
        types(&merge),
        [
            "const float* __restrict__",
            "float* __restrict__",
            "int",
            "int"
        ]
    );

    let launch = Scan2dLaunch::new(&grid(2, 96, 8, 16, 5, 7), None, true).unwrap();
    assert!(
        matches!(launch.scan, Scan2dPass::Rows(scan) if scan.scalar_args == [96, 8, 16, 5, 7, 1])
    );
    assert_eq!(launch.merge.scalar_args, [8, 96 * 5 * 7]);
    assert_eq!(launch.partial_shape, [2, 8, 96, 5, 7]);
    let launch = Scan2dLaunch::new(&grid(1, 3, 1, 0, 1, 9), None, false).unwrap();
    assert!(
        matches!(launch.scan, Scan2dPass::Rows(scan) if scan.scalar_args == [3, 1, 0, 1, 9, 0])
    );
    assert_eq!(launch.merge.scalar_args, [1, 27]);
    assert_eq!(launch.partial_shape, [1, 1, 3, 1, 9]);
    // version 3: R after N; partial and the sum as in version 2
    let launch = Scan2dLaunch::new(&grid(2, 96, 8, 16, 5, 7), Some(4), true).unwrap();
    assert!(
        matches!(launch.scan, Scan2dPass::LowRank(scan) if scan.scalar_args == [96, 8, 16, 4, 5, 7, 1])
    );
    assert_eq!(launch.merge.scalar_args, [8, 96 * 5 * 7]);
    assert_eq!(launch.partial_shape, [2, 8, 96, 5, 7]);
}

/// Checks that the first pass's grid covers `channels` as
/// [`assert_covers`] does, whichever its form; returns the grid.
fn assert_scan_covers(launch: &Scan2dLaunch, channels: usize) -> (u32, u32, u32) {
    match &launch.scan {
        Scan2dPass::Rows(scan) => {
            assert_covers(scan, CHANNELS_PER_BLOCK, channels);
            scan.grid
        }
        Scan2dPass::LowRank(scan) => {
            assert_covers(scan, CHANNELS_PER_BLOCK, channels);
            scan.grid
        }
    }
}

/// The grid, block and config of `launch` cover `count` threads along x
/// with less than a block to spare.
fn assert_covers<const INTS: usize>(launch: &KernelLaunch<INTS>, per_block: usize, count: usize) {
    assert_eq!(launch.block as usize, per_block);
    let threads = launch.grid.0 as usize * per_block;
    assert!(
        threads >= count && threads - count < per_block,
        "{threads} threads for {count}"
    );
    let config = launch.config();
    assert_eq!(config.grid_dim, launch.grid);
    assert_eq!(config.block_dim, (launch.block, 1, 1));
    assert_eq!(config.shared_mem_bytes, 0);
}

#[test]
fn grids_2d_cover_every_direction_channel_and_output() {
    // The model's shapes (Di = 256 or 512, K = 8, N = 16), and ragged ones;
    // (scan grid, merge grid).
    let cases = [
        (grid(1, 256, 8, 16, 40, 40), (4, 8, 1), (1600, 1, 1)),
        (grid(1, 512, 8, 16, 20, 20), (8, 8, 1), (800, 1, 1)),
        (grid(3, 65, 4, 16, 3, 5), (2, 4, 3), (4, 1, 3)),
        (grid(2, 1, 1, 1, 1, 1), (1, 1, 2), (1, 1, 2)),
    ];
    for (dims, scan_grid, merge_grid) in cases {
        for rank in [None, Some(4)] {
            let launch = Scan2dLaunch::new(&dims, rank, true).unwrap();
            let scan = assert_scan_covers(&launch, dims.channels);
            assert_eq!(
                (scan, launch.merge.grid),
                (scan_grid, merge_grid),
                "{dims:?}, R = {rank:?}"
            );
            let item_len = dims.channels * dims.height * dims.width;
            assert_covers(&launch.merge, OUTPUTS_PER_BLOCK, item_len);
        }
    }
}

#[test]
fn launch_2d_refuses_what_the_kernels_cannot_run() {
    assert_eq!(
        Scan2dLaunch::new(&grid(1, 8, 8, MAX_STATE + 1, 4, 4), None, true),
        Err(LaunchError::TooManyStates(MAX_STATE + 1))
    );
    for k in [0, 9] {
        let err = Scan2dLaunch::new(&grid(1, 8, k, 16, 4, 4), None, true).unwrap_err();
        assert_eq!(err, LaunchError::Directions(k));
        assert!(err.to_string().contains("1 to 8 directions"), "{err}");
    }
    // delta (and the scratch tensor of its shape): 8 * 4096 * 256 * 256
    assert_eq!(
        Scan2dLaunch::new(&grid(1, 4096, 8, 16, 256, 256), None, true),
        Err(LaunchError::TooLarge {
            name: "delta",
            elements: 1 << 31
        })
    );
    // Bs, larger than delta when N > Di: 8 * 16 * 4096 * 4096
    assert_eq!(
        Scan2dLaunch::new(&grid(1, 1, 8, 16, 4096, 4096), None, true),
        Err(LaunchError::TooLarge {
            name: "Bs",
            elements: 1 << 31
        })
    );
    assert_eq!(
        Scan2dLaunch::new(&grid(70_000, 8, 8, 1, 1, 1), None, true),
        Err(LaunchError::GridTooLarge {
            what: "B (batch)",
            count: 70_000
        })
    );
    // version 3: dt_low, larger than delta when R > Di: 8 * 4096 * 256 * 256
    assert_eq!(
        Scan2dLaunch::new(&grid(1, 1, 8, 16, 256, 256), Some(4096), true),
        Err(LaunchError::TooLarge {
            name: "dt_low",
            elements: 1 << 31
        })
    );
}

/// Runs the kernel source on the CPU: a C++ shim gives it `blockIdx`,
/// `blockDim` and `threadIdx`, and a driver calls a kernel for every thread
/// of each grid that [`ScanLaunch`] or [`Scan2dLaunch`] sized, with the
/// arguments it packed.
struct CpuEmulation {
    dir: PathBuf,
    driver: PathBuf,
}

const EMULATION_DRIVER: &str = r#"
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>
struct Index { unsigned x, y, z; };
static Index blockIdx, blockDim, threadIdx;
#define __global__
#define __device__
#define __forceinline__ inline
#include "selective_scan.cu"

// Calls `kernel` for every thread of the grid launch[0..3], block launch[3].
template <typename Kernel> static void run_grid(const int32_t* launch, Kernel kernel) {
    blockDim = {(unsigned)launch[3], 1, 1};
    for (blockIdx.z = 0; blockIdx.z < (unsigned)launch[2]; ++blockIdx.z)
    for (blockIdx.y = 0; blockIdx.y < (unsigned)launch[1]; ++blockIdx.y)
    for (blockIdx.x = 0; blockIdx.x < (unsigned)launch[0]; ++blockIdx.x)
    for (threadIdx.x = 0; threadIdx.x < blockDim.x; ++threadIdx.x)
        kernel();
}

// stdin: the op (i32): 1 SelectiveScan, 2 SelectiveScan2D, 3 its version 3
// form; for each of its launches (1: the scan; 2 and 3: the scan, then the
// sum) grid x, y, z, block and the launch's int arguments (i32); the element
// counts of the inputs (1 and 2: u, delta, A, Bs, Cs, D, delta_bias; 3: u,
// dt_low, dt_weight, A, Bs, Cs, D, delta_bias), then of the outputs (1: y;
// 2 and 3: partial, y) (u64); the inputs (f32). stdout: y (f32).
int main() {
    int32_t op, scan[11], merge[6];
    if (fread(&op, 4, 1, stdin) != 1 || op < 1 || op > 3) return 2;
    const size_t scan_ints = 4 + 4 + op;
    if (fread(scan, 4, scan_ints, stdin) != scan_ints) return 2;
    if (op != 1 && fread(merge, 4, 6, stdin) != 6) return 2;
    const size_t input_count = op == 3 ? 8 : 7;
    const size_t tensor_count = input_count + (op == 1 ? 1 : 2);
    uint64_t counts[10];
    if (fread(counts, 8, tensor_count, stdin) != tensor_count) return 2;
    std::vector<std::vector<float>> t(tensor_count);
    for (size_t i = 0; i < tensor_count; ++i) {
        // outputs start as NaN, as uninitialised memory might be
        t[i].assign(counts[i], NAN);
        if (i < input_count && fread(t[i].data(), 4, counts[i], stdin) != counts[i]) return 3;
    }
    if (op == 1) {
        run_grid(scan, [&] {
            fer_edge_selective_scan(t[0].data(), t[1].data(), t[2].data(), t[3].data(),
                t[4].data(), t[5].data(), t[6].data(), t[7].data(),
                scan[4], scan[5], scan[6], scan[7], scan[8]);
        });
    } else if (op == 2) {
        run_grid(scan, [&] {
            fer_edge_selective_scan_2d(t[0].data(), t[1].data(), t[2].data(), t[3].data(),
                t[4].data(), t[5].data(), t[6].data(), t[7].data(),
                scan[4], scan[5], scan[6], scan[7], scan[8], scan[9]);
        });
    } else {
        run_grid(scan, [&] {
            fer_edge_selective_scan_2d_low_rank(t[0].data(), t[1].data(), t[2].data(),
                t[3].data(), t[4].data(), t[5].data(), t[6].data(), t[7].data(), t[8].data(),
                scan[4], scan[5], scan[6], scan[7], scan[8], scan[9], scan[10]);
        });
    }
    if (op != 1) {
        run_grid(merge, [&] {
            fer_edge_merge_directions(t[input_count].data(), t[input_count + 1].data(),
                merge[4], merge[5]);
        });
    }
    const std::vector<float>& y = t[tensor_count - 1];
    return fwrite(y.data(), 4, y.size(), stdout) == y.size() ? 0 : 4;
}
"#;

/// A launch as the driver reads it: grid x, y, z, block, then the ints.
fn driver_ints<const INTS: usize>(launch: &KernelLaunch<INTS>) -> Vec<i32> {
    let (x, y, z) = launch.grid;
    [x as i32, y as i32, z as i32, launch.block as i32]
        .into_iter()
        .chain(launch.scalar_args)
        .collect()
}

impl CpuEmulation {
    /// Compiles the driver with the system C++ compiler, or says why not.
    fn build() -> Result<CpuEmulation, String> {
        // One directory per emulation: the tests that use one run in parallel.
        static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let build = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("fer-edge-cuda-scan-{}-{build}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("selective_scan.cu"), KERNEL_SOURCE).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("driver.cpp"), EMULATION_DRIVER).map_err(|e| e.to_string())?;
        let driver = dir.join("driver");
        // No FMA contraction: the same f32 operations as the Rust reference.
        let output = Command::new("c++")
            .args([
                "-std=c++17",
                "-O2",
                "-ffp-contract=off",
                "-Wno-unknown-pragmas",
            ])
            .arg(dir.join("driver.cpp"))
            .arg("-o")
            .arg(&driver)
            .output()
            .map_err(|e| format!("cannot run c++: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "c++ failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(CpuEmulation { dir, driver })
    }

    /// `SelectiveScan`'s kernel on `problem`, on the grid [`ScanLaunch`] sizes.
    fn run(&self, problem: &Problem) -> Vec<f32> {
        let launch = ScanLaunch::new(&problem.dims, problem.delta_softplus).unwrap();
        let header: Vec<i32> = [1].into_iter().chain(driver_ints(&launch)).collect();
        let inputs = delta_inputs(problem);
        self.run_driver(&header, &inputs, &[problem.output_len()])
    }

    /// `SelectiveScan2D`'s two kernels on `problem` (in its version 2 or 3
    /// form), on the grids [`Scan2dLaunch`] sizes.
    fn run_2d(&self, problem: &GridProblem) -> Vec<f32> {
        let launch = problem.launch();
        let (op, scan_ints) = match launch.scan {
            Scan2dPass::Rows(scan) => (2, driver_ints(&scan)),
            Scan2dPass::LowRank(scan) => (3, driver_ints(&scan)),
        };
        let header: Vec<i32> = [op]
            .into_iter()
            .chain(scan_ints)
            .chain(driver_ints(&launch.merge))
            .collect();
        let mut inputs = delta_inputs(&problem.data).to_vec();
        if let Some(projection) = &problem.projection {
            inputs.splice(1..2, [&projection.low[..], &projection.weight]);
        }
        let partial_len = launch.partial_shape.iter().product();
        assert_eq!(partial_len, problem.data.delta.len());
        let outputs = [partial_len, problem.output_len()];
        self.run_driver(&header, &inputs, &outputs)
    }

    /// Runs the driver on `header`, `inputs` and the output counts; returns
    /// y.
    fn run_driver(&self, header: &[i32], inputs: &[&[f32]], outputs: &[usize]) -> Vec<f32> {
        let mut stdin = Vec::new();
        for value in header {
            stdin.extend(value.to_le_bytes());
        }
        let counts = inputs
            .iter()
            .map(|t| t.len())
            .chain(outputs.iter().copied());
        for count in counts {
            stdin.extend((count as u64).to_le_bytes());
        }
        for value in inputs.iter().flat_map(|t| t.iter()) {
            stdin.extend(value.to_le_bytes());
        }
        let stdin_path = self.dir.join("stdin");
        std::fs::write(&stdin_path, stdin).unwrap();
        let output = Command::new(&self.driver)
            .stdin(std::fs::File::open(&stdin_path).unwrap())
            .output()
            .unwrap();
        assert!(output.status.success(), "driver: {:?}", output.status);
        output
            .stdout
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }
}

/// The scan inputs of `data` in the order of versions 1 and 2: u, delta, A,
/// Bs, Cs, D, delta_bias.
fn delta_inputs(data: &Problem) -> [&[f32]; 7] {
    [
        &data.u,
        &data.delta,
        &data.a,
        &data.b,
        &data.c,
        &data.d,
        &data.delta_bias,
    ]
}

impl Drop for CpuEmulation {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The emulation, or `None` after a loud skip when no C++ compiler works.
fn cpu_emulation() -> Option<CpuEmulation> {
    CpuEmulation::build()
        .map_err(|why| {
            common::skip(&format!(
                "the CUDA kernels' CPU emulation needs a C++ compiler: {why}"
            ))
        })
        .ok()
}

/// Checks `got` against `want` bit for bit, naming the first difference.
fn assert_same_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (at, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits(),
            "{what}: y[{at}] = {g}, reference {w}"
        );
    }
}

#[test]
fn kernel_source_run_on_the_cpu_matches_the_reference_bit_for_bit() {
    let Some(emulation) = cpu_emulation() else {
        return;
    };
    let cases = [
        (dims(1, 16, 2, 16, 33), true, TYPICAL),
        (dims(2, 8 * 70, 8, 16, 20), true, TYPICAL),
        (dims(1, 24, 3, 5, 40), false, SLOW),
        (dims(2, 12, 4, 16, 17), true, STIFF),
        (dims(1, 4, 1, 1, 1), true, TYPICAL),
        (dims(1, 8, 2, 0, 6), true, TYPICAL),
    ];
    for (seed, (dims, softplus, ranges)) in cases.into_iter().enumerate() {
        let problem = Problem::random(dims, softplus, ranges, seed as u64);
        let want = problem.run(reference());
        let got = emulation.run(&problem);
        assert_same_bits(&got, &want, &format!("{dims:?} softplus={softplus}"));
    }
}

/// The 2-D kernels walk the contract's directions with the CPU's traversal
/// formulas and add them in the CPU's order: the same y, bit for bit, as
/// the reference kernel's `selective_scan_2d`.
#[test]
fn kernel_2d_source_run_on_the_cpu_matches_the_reference_bit_for_bit() {
    let Some(emulation) = cpu_emulation() else {
        return;
    };
    let cases = [
        (grid(1, 16, 8, 16, 5, 7), true, TYPICAL), // the contract's K, wide
        (grid(2, 70, 8, 16, 7, 5), true, TYPICAL), // two channel blocks, tall, two items
        (grid(1, 8, 4, 16, 6, 9), true, STIFF),    // K = 4, non-square
        (grid(1, 12, 4, 5, 1, 9), false, SLOW),    // one row
        (grid(1, 6, 8, 3, 9, 1), true, TYPICAL),   // one column
        (grid(2, 9, 6, 7, 11, 4), true, TYPICAL),  // H > W: h mod W on the diagonals
        (grid(1, 5, 2, 16, 14, 14), true, TYPICAL), // 196 steps
        (grid(1, 3, 1, 2, 4, 6), true, SLOW),      // one direction
        (grid(1, 4, 3, 0, 3, 4), true, TYPICAL),   // no states: y = sum of D u
        (grid(1, 4, 8, 16, 1, 1), true, TYPICAL),  // one pixel
    ];
    for (seed, (dims, softplus, ranges)) in cases.into_iter().enumerate() {
        let problem = GridProblem::random(dims, softplus, ranges, seed as u64);
        let want = problem.reference();
        assert!(want.iter().all(|v| v.is_finite()), "{dims:?}");
        assert!(want.iter().any(|v| v.abs() > 1e-3), "{dims:?}: all about 0");
        let got = emulation.run_2d(&problem);
        assert_same_bits(&got, &want, &format!("{dims:?} softplus={softplus}"));
    }
}

/// Version 3's kernel projects each channel's delta as the CPU kernels do:
/// the same y, bit for bit, as the reference kernel's on the same dt_low and
/// dt_weight, and as version 2's kernel on the projected delta.
#[test]
fn kernel_2d_low_rank_source_run_on_the_cpu_matches_the_reference_bit_for_bit() {
    let Some(emulation) = cpu_emulation() else {
        return;
    };
    let cases = [
        (grid(1, 16, 8, 16, 5, 7), 4, true, TYPICAL), // the nano model's R at Di 128
        (grid(2, 70, 8, 16, 7, 5), 8, true, TYPICAL), // two channel blocks, two items
        (grid(1, 8, 4, 16, 6, 9), 6, true, STIFF),
        (grid(1, 12, 4, 5, 1, 9), 1, false, SLOW), // rank 1, no softplus
        (grid(2, 9, 6, 7, 11, 4), 3, true, TYPICAL),
    ];
    for (seed, (dims, rank, softplus, ranges)) in cases.into_iter().enumerate() {
        let mut problem = GridProblem::random_low_rank(dims, rank, softplus, ranges, seed as u64);
        let want = problem.reference();
        assert!(want.iter().all(|v| v.is_finite()), "{dims:?}");
        assert!(want.iter().any(|v| v.abs() > 1e-3), "{dims:?}: all about 0");
        let what = format!("{dims:?} R={rank} softplus={softplus}");
        assert_same_bits(&emulation.run_2d(&problem), &want, &what);
        // version 2's kernel on the delta the projection stands for
        let projection = problem.projection.take().unwrap();
        problem.data.delta = projection.delta(&dims);
        assert_same_bits(
            &emulation.run_2d(&problem),
            &want,
            &format!("{what}, version 2"),
        );
    }
}

/// The scan op of one contract version, for the rewrite tests.
#[derive(Debug, Clone, Copy)]
enum Version {
    One,
    Two,
    /// `SelectiveScan2D` with the dt projection inside (R = 2).
    Three,
}

impl Version {
    /// Its inputs with N = `state`: version 1 for B=1, KD=8, G=2, L=5;
    /// versions 2 and 3 for B=1, Di=3, K=8, H=2, W=5.
    fn input_facts(self, state: usize) -> Vec<TypedFact> {
        if let Version::Three = self {
            let mut facts = Version::Two.input_facts(state);
            facts.splice(1..2, [f32::fact([1, 8, 2, 2, 5]), f32::fact([24, 2])]);
            return facts;
        }
        match self {
            Version::One => vec![
                f32::fact([1, 8, 5]),
                f32::fact([1, 8, 5]),
                f32::fact([8, state]),
                f32::fact([1, 2, state, 5]),
                f32::fact([1, 2, state, 5]),
                f32::fact([8]),
                f32::fact([8]),
            ],
            _ => vec![
                f32::fact([1, 3, 2, 5]),
                f32::fact([1, 8, 3, 2, 5]),
                f32::fact([24, state]),
                f32::fact([1, 8, state, 2, 5]),
                f32::fact([1, 8, state, 2, 5]),
                f32::fact([24]),
                f32::fact([24]),
            ],
        }
    }

    /// y's fact, u's shape.
    fn output_fact(self) -> TypedFact {
        self.input_facts(16)[0].clone()
    }

    /// The CPU op.
    fn host_op(self) -> Box<dyn TypedOp> {
        let delta_softplus = true;
        match self {
            Version::One => Box::new(SelectiveScan { delta_softplus }),
            Version::Two | Version::Three => Box::new(SelectiveScan2D {
                delta_softplus,
                low_rank: matches!(self, Version::Three),
            }),
        }
    }

    /// The model's nodes of the CPU op.
    fn host_scans(self, model: &TypedModel) -> usize {
        let is_host = |n: &&TypedNode| match self {
            Version::One => n.op_is::<SelectiveScan>(),
            Version::Two | Version::Three => n.op_is::<SelectiveScan2D>(),
        };
        model.nodes().iter().filter(is_host).count()
    }

    /// The model's nodes of the GPU op.
    fn gpu_scans(self, model: &TypedModel) -> Vec<&TypedNode> {
        let is_gpu = |n: &&TypedNode| match self {
            Version::One => n.op_is::<CudaSelectiveScan>(),
            Version::Two | Version::Three => n.op_is::<CudaSelectiveScan2D>(),
        };
        model.nodes().iter().filter(is_gpu).collect()
    }
}

/// What tract-cuda makes of a model with one scan: the inputs come from
/// GPU ops (here, host sources copied to the device), are copied back to
/// the host for the scan, whose output goes back to the device. Inputs
/// `on_host` come from the host directly.
fn translated_scan_model(
    version: Version,
    state: usize,
    on_host: &[usize],
) -> TractResult<TypedModel> {
    let mut model = TypedModel::default();
    let mut inputs = tvec![];
    for (ix, fact) in version.input_facts(state).into_iter().enumerate() {
        let source = model.add_source(format!("input{ix}"), fact)?;
        let input = if on_host.contains(&ix) {
            source
        } else {
            let on_device = model.wire_node(
                format!("gpu_op{ix}"),
                DeviceSync::new(DeviceSyncKind::ToDevice),
                &[source],
            )?;
            model.wire_node(
                format!("scan.to-cpu-{ix}"),
                DeviceSync::new(DeviceSyncKind::ToHost),
                &on_device,
            )?[0]
        };
        inputs.push(input);
    }
    let y = model.wire_node("scan", version.host_op(), &inputs)?;
    let y = model.wire_node("next_gpu_op", DeviceSync::new(DeviceSyncKind::ToDevice), &y)?;
    let y = model.wire_node("output", DeviceSync::new(DeviceSyncKind::ToHost), &y)?;
    model.select_output_outlets(&y)?;
    Ok(model)
}

fn count_syncs(model: &TypedModel, kind: DeviceSyncKind) -> usize {
    model
        .nodes()
        .iter()
        .filter(|n| n.op_as::<DeviceSync>().is_some_and(|s| s.kind == kind))
        .count()
}

#[test]
fn rewrite_runs_the_scan_on_the_inputs_device_tensors() -> TractResult<()> {
    for version in [Version::One, Version::Two, Version::Three] {
        let mut model = translated_scan_model(version, 16, &[])?;
        run_scans_on_gpu(&mut model)?;
        assert_eq!(version.host_scans(&model), 0, "{version:?}");
        let scans = version.gpu_scans(&model);
        assert_eq!(scans.len(), 1, "{version:?}");
        for input in &scans[0].inputs {
            let producer = model.node(input.node);
            assert!(
                producer.name.starts_with("gpu_op"),
                "{version:?}: scan input from {}",
                producer.name
            );
            assert!(model.outlet_fact(*input)?.as_device_fact().is_some());
        }
        let y = model.outlet_fact(OutletId::new(scans[0].id, 0))?;
        assert_eq!(y.to_device_fact()?.shape, version.output_fact().shape);
        // The scan's output feeds the next GPU op directly: the one copy to
        // the host left is the model output's.
        assert_eq!(count_syncs(&model, DeviceSyncKind::ToHost), 1);
        assert_eq!(model.output_fact(0)?, &version.output_fact());
    }
    Ok(())
}

#[test]
fn rewrite_copies_inputs_left_on_the_host_to_the_device() -> TractResult<()> {
    for version in [Version::One, Version::Two, Version::Three] {
        let mut model = translated_scan_model(version, 16, &[2, 5])?;
        run_scans_on_gpu(&mut model)?;
        let scans = version.gpu_scans(&model);
        let scan = scans.first().expect("the scan on the GPU");
        for ix in [2, 5] {
            let producer = model.node(scan.inputs[ix].node);
            assert_eq!(
                producer.op_as::<DeviceSync>().map(|s| s.kind),
                Some(DeviceSyncKind::ToDevice),
                "{version:?}: input {ix} from {}",
                producer.name
            );
            assert_eq!(
                model.node(producer.inputs[0].node).name,
                format!("input{ix}")
            );
        }
    }
    Ok(())
}

#[test]
fn rewrite_leaves_scans_with_too_many_states_on_the_cpu() -> TractResult<()> {
    for version in [Version::One, Version::Two, Version::Three] {
        let mut model = translated_scan_model(version, MAX_STATE + 1, &[])?;
        run_scans_on_gpu(&mut model)?;
        assert_eq!(version.host_scans(&model), 1, "{version:?}");
        assert!(version.gpu_scans(&model).is_empty(), "{version:?}");
    }
    Ok(())
}

/// A model of one scan as the exporter writes it: u, delta, Bs and Cs are
/// computed (here, inputs), A, D and delta_bias are weights.
fn one_scan_model(problem: &Problem) -> TractResult<TypedModel> {
    let ScanDims {
        batch,
        channels,
        groups,
        state,
        len,
    } = problem.dims;
    let mut model = TypedModel::default();
    let activation = |data: &[f32], shape: &[usize]| Tensor::from_shape(shape, data);
    let u = model.add_source("u", f32::fact([batch, channels, len]))?;
    let delta = model.add_source("delta", f32::fact([batch, channels, len]))?;
    let a = model.add_const("A", activation(&problem.a, &[channels, state])?)?;
    let b = model.add_source("Bs", f32::fact([batch, groups, state, len]))?;
    let c = model.add_source("Cs", f32::fact([batch, groups, state, len]))?;
    let d = model.add_const("D", activation(&problem.d, &[channels])?)?;
    let bias = model.add_const("delta_bias", activation(&problem.delta_bias, &[channels])?)?;
    let y = model.wire_node(
        "scan",
        SelectiveScan {
            delta_softplus: problem.delta_softplus,
        },
        &[u, delta, a, b, c, d, bias],
    )?;
    model.select_output_outlets(&y)?;
    Ok(model)
}

#[test]
fn gpu_scan_matches_the_reference() -> TractResult<()> {
    if let Err(cause) = tract_cuda::utils::ensure_cuda_runtime_dependencies("CUDA libraries") {
        common::skip(&format!(
            "gpu_scan_matches_the_reference: no usable CUDA GPU here ({cause:#}). \
             Run `cargo test --release --features cuda --test cuda_scan` on a Jetson."
        ));
        return Ok(());
    }
    for (seed, (dims, softplus)) in [
        (dims(1, 2048, 8, 16, 400), true),
        (dims(2, 8 * 70, 8, 16, 37), true),
        (dims(1, 24, 3, 5, 40), false),
    ]
    .into_iter()
    .enumerate()
    {
        let problem = Problem::random(dims, softplus, TYPICAL, seed as u64);
        let plan = Device::Cuda.prepare(one_scan_model(&problem)?)?;
        let on_gpu = plan
            .model()
            .nodes()
            .iter()
            .any(|n| n.op_is::<CudaSelectiveScan>());
        assert!(on_gpu, "the CUDA plan should run the scan on the GPU");
        let ScanDims {
            batch,
            channels,
            groups,
            state,
            len,
        } = dims;
        let y = plan.run(tvec![
            Tensor::from_shape(&[batch, channels, len], &problem.u)?.into(),
            Tensor::from_shape(&[batch, channels, len], &problem.delta)?.into(),
            Tensor::from_shape(&[batch, groups, state, len], &problem.b)?.into(),
            Tensor::from_shape(&[batch, groups, state, len], &problem.c)?.into(),
        ])?;
        let got = y[0].to_plain_array_view::<f32>()?;
        assert_close(got.as_slice().unwrap(), &problem.run(reference()), &dims);
    }
    Ok(())
}

/// The GPU's y against the CPU reference's: GPU expf is not the CPU's and
/// the GPU contracts to FMA.
fn assert_close(got: &[f32], want: &[f32], dims: &dyn std::fmt::Debug) {
    assert_eq!(got.len(), want.len(), "{dims:?}");
    for (at, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "{dims:?}: y[{at}] = {g} on the GPU, reference {w}"
        );
    }
}

/// A model of one 2-D scan as the exporter writes it: u, delta (in version
/// 3's form dt_low), Bs and Cs are computed (here, inputs), A, D and
/// delta_bias (and dt_weight) are weights.
fn one_scan_2d_model(problem: &GridProblem) -> TractResult<TypedModel> {
    let GridDims {
        batch,
        channels,
        directions,
        state,
        height,
        width,
    } = problem.dims;
    let data = &problem.data;
    let k_channels = directions * channels;
    let mut model = TypedModel::default();
    let weight = |data: &[f32], shape: &[usize]| Tensor::from_shape(shape, data);
    let u = model.add_source("u", f32::fact([batch, channels, height, width]))?;
    let delta = match &problem.projection {
        Some(p) => {
            let dt_low = f32::fact([batch, directions, p.rank, height, width]);
            let dt_low = model.add_source("dt_low", dt_low)?;
            let dt_weight = weight(&p.weight, &[k_channels, p.rank])?;
            vec![dt_low, model.add_const("dt_weight", dt_weight)?]
        }
        None => {
            let delta = f32::fact([batch, directions, channels, height, width]);
            vec![model.add_source("delta", delta)?]
        }
    };
    let a = model.add_const("A", weight(&data.a, &[k_channels, state])?)?;
    let per_direction = f32::fact([batch, directions, state, height, width]);
    let b = model.add_source("Bs", per_direction.clone())?;
    let c = model.add_source("Cs", per_direction)?;
    let d = model.add_const("D", weight(&data.d, &[k_channels])?)?;
    let bias = model.add_const("delta_bias", weight(&data.delta_bias, &[k_channels])?)?;
    let y = model.wire_node(
        "scan",
        SelectiveScan2D {
            delta_softplus: data.delta_softplus,
            low_rank: problem.projection.is_some(),
        },
        &[&[u][..], &delta, &[a, b, c, d, bias]].concat(),
    )?;
    model.select_output_outlets(&y)?;
    Ok(model)
}

#[test]
fn gpu_2d_scan_matches_the_reference() -> TractResult<()> {
    if let Err(cause) = tract_cuda::utils::ensure_cuda_runtime_dependencies("CUDA libraries") {
        common::skip(&format!(
            "gpu_2d_scan_matches_the_reference: no usable CUDA GPU here ({cause:#}). \
             Run `cargo test --release --features cuda --test cuda_scan` on a Jetson."
        ));
        return Ok(());
    }
    for (seed, (dims, rank, softplus)) in [
        (grid(1, 256, 8, 16, 28, 28), None, true),
        (grid(2, 70, 4, 16, 7, 9), None, true),
        (grid(1, 24, 8, 5, 6, 1), None, false),
        (grid(1, 256, 8, 16, 28, 28), Some(8), true),
        (grid(2, 70, 4, 16, 7, 9), Some(3), true),
    ]
    .into_iter()
    .enumerate()
    {
        let problem = match rank {
            Some(rank) => GridProblem::random_low_rank(dims, rank, softplus, TYPICAL, seed as u64),
            None => GridProblem::random(dims, softplus, TYPICAL, seed as u64),
        };
        let plan = Device::Cuda.prepare(one_scan_2d_model(&problem)?)?;
        let on_gpu = plan
            .model()
            .nodes()
            .iter()
            .any(|n| n.op_is::<CudaSelectiveScan2D>());
        assert!(on_gpu, "the CUDA plan should run the 2-D scan on the GPU");
        let GridDims {
            batch,
            channels,
            directions,
            state,
            height,
            width,
        } = dims;
        let data = &problem.data;
        let per_direction = [batch, directions, state, height, width];
        let delta = match &problem.projection {
            Some(p) => Tensor::from_shape(&[batch, directions, p.rank, height, width], &p.low)?,
            None => Tensor::from_shape(&[batch, directions, channels, height, width], &data.delta)?,
        };
        let y = plan.run(tvec![
            Tensor::from_shape(&[batch, channels, height, width], &data.u)?.into(),
            delta.into(),
            Tensor::from_shape(&per_direction, &data.b)?.into(),
            Tensor::from_shape(&per_direction, &data.c)?.into(),
        ])?;
        let got = y[0].to_plain_array_view::<f32>()?;
        assert_close(got.as_slice().unwrap(), &problem.reference(), &dims);
    }
    Ok(())
}

#[test]
fn cuda_device_without_a_gpu_is_an_error_and_auto_falls_back_to_the_cpu() -> TractResult<()> {
    if tract_cuda::utils::ensure_cuda_runtime_dependencies("CUDA libraries").is_ok() {
        common::skip("this machine has a usable CUDA GPU");
        return Ok(());
    }
    let problem = Problem::random(dims(1, 8, 2, 4, 5), true, TYPICAL, 7);
    let err = Device::Cuda.prepare(one_scan_model(&problem)?).unwrap_err();
    assert!(format!("{err:#}").contains("no usable CUDA GPU"), "{err:#}");
    let plan = Device::Auto.prepare(one_scan_model(&problem)?)?;
    assert!(plan
        .model()
        .nodes()
        .iter()
        .any(|n| n.op_is::<SelectiveScan>()));
    let problem = GridProblem::random(grid(1, 4, 8, 4, 3, 5), true, TYPICAL, 8);
    let plan = Device::Auto.prepare(one_scan_2d_model(&problem)?)?;
    assert!(plan
        .model()
        .nodes()
        .iter()
        .any(|n| n.op_is::<SelectiveScan2D>()));
    Ok(())
}
