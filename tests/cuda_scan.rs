//! The CUDA selective scan (`--features cuda`).
//!
//! Without a GPU: the launch arguments against the kernel's signature, the
//! grid sizing, the refusals, the rewrite that puts the scan on the GPU in a
//! translated model, and the kernel source itself, compiled as C++ with a
//! small shim and run block by block on the CPU against the reference.
//! With a GPU: the whole CUDA plan of a one-scan model against the reference
//! (skipped, loudly, when no GPU is usable).
#![cfg(feature = "cuda")]

use fer_edge::device::Device;
use fer_edge::scan::cuda::launch::{
    LaunchError, ScanLaunch, CHANNELS_PER_BLOCK, KERNEL_NAME, KERNEL_SOURCE, MAX_STATE,
};
use fer_edge::scan::cuda::{run_scans_on_gpu, CudaSelectiveScan};
use fer_edge::scan::kernel::{reference, ScanDims};
use fer_edge::scan::op::SelectiveScan;
use std::path::PathBuf;
use std::process::Command;
use tract_core::internal::*;
use tract_gpu::fact::DeviceTypedFactExt;
use tract_gpu::sync::{DeviceSync, DeviceSyncKind};

mod common;
#[path = "common/scan_problem.rs"]
mod scan_problem;
use scan_problem::{dims, Problem, SLOW, STIFF, TYPICAL};

/// The parameter names of the kernel's signature in `KERNEL_SOURCE`, in order.
fn kernel_parameters() -> Vec<(String, String)> {
    let signature = KERNEL_SOURCE
        .split(&format!("void {KERNEL_NAME}("))
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
    let parameters = kernel_parameters();
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

/// Runs the kernel source on the CPU: a C++ shim gives it `blockIdx`,
/// `blockDim` and `threadIdx`, and a driver calls it for every thread of
/// the grid that [`ScanLaunch`] sized, with the arguments it packed.
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
#include "selective_scan.cu"

// stdin: grid x, y, z, block, the 5 int arguments (i32), the element counts
// of u, delta, A, Bs, Cs, D, delta_bias, y (u64), the 7 inputs (f32).
// stdout: y (f32).
int main() {
    int32_t header[9];
    uint64_t counts[8];
    if (fread(header, 4, 9, stdin) != 9 || fread(counts, 8, 8, stdin) != 8) return 2;
    std::vector<std::vector<float>> tensors(8);
    for (int i = 0; i < 8; ++i) {
        tensors[i].resize(counts[i]);
        if (i < 7 && fread(tensors[i].data(), 4, counts[i], stdin) != counts[i]) return 3;
    }
    blockDim = {(unsigned)header[3], 1, 1};
    for (blockIdx.z = 0; blockIdx.z < (unsigned)header[2]; ++blockIdx.z)
    for (blockIdx.y = 0; blockIdx.y < (unsigned)header[1]; ++blockIdx.y)
    for (blockIdx.x = 0; blockIdx.x < (unsigned)header[0]; ++blockIdx.x)
    for (threadIdx.x = 0; threadIdx.x < blockDim.x; ++threadIdx.x)
        fer_edge_selective_scan(tensors[0].data(), tensors[1].data(), tensors[2].data(),
            tensors[3].data(), tensors[4].data(), tensors[5].data(), tensors[6].data(),
            tensors[7].data(), header[4], header[5], header[6], header[7], header[8]);
    return fwrite(tensors[7].data(), 4, counts[7], stdout) == counts[7] ? 0 : 4;
}
"#;

impl CpuEmulation {
    /// Compiles the driver with the system C++ compiler, or says why not.
    fn build() -> Result<CpuEmulation, String> {
        let dir = std::env::temp_dir().join(format!("fer-edge-cuda-scan-{}", std::process::id()));
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

    fn run(&self, problem: &Problem) -> Vec<f32> {
        let launch = ScanLaunch::new(&problem.dims, problem.delta_softplus).unwrap();
        let inputs = [
            &problem.u,
            &problem.delta,
            &problem.a,
            &problem.b,
            &problem.c,
            &problem.d,
            &problem.delta_bias,
        ];
        let mut stdin = Vec::new();
        let (x, y, z) = launch.grid;
        for value in [x as i32, y as i32, z as i32, launch.block as i32]
            .into_iter()
            .chain(launch.scalar_args)
        {
            stdin.extend(value.to_le_bytes());
        }
        for count in inputs.iter().map(|t| t.len()).chain([problem.output_len()]) {
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

impl Drop for CpuEmulation {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn kernel_source_run_on_the_cpu_matches_the_reference_bit_for_bit() {
    let emulation = match CpuEmulation::build() {
        Ok(emulation) => emulation,
        Err(why) => {
            common::skip(&format!(
                "the CUDA kernel's CPU emulation needs a C++ compiler: {why}"
            ));
            return;
        }
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
        assert_eq!(got.len(), want.len(), "{dims:?}");
        for (at, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits(),
                "{dims:?} softplus={softplus}: y[{at}] = {g}, reference {w}"
            );
        }
    }
}

/// Inputs for B=1, KD=8, G=2, N=`state`, L=5.
fn scan_input_facts(state: usize) -> [TypedFact; 7] {
    [
        f32::fact([1, 8, 5]),
        f32::fact([1, 8, 5]),
        f32::fact([8, state]),
        f32::fact([1, 2, state, 5]),
        f32::fact([1, 2, state, 5]),
        f32::fact([8]),
        f32::fact([8]),
    ]
}

/// What tract-cuda makes of a model with one scan: the inputs come from
/// GPU ops (here, host sources copied to the device), are copied back to
/// the host for the scan, whose output goes back to the device.
fn translated_scan_model(state: usize, on_host: &[usize]) -> TractResult<TypedModel> {
    let mut model = TypedModel::default();
    let mut inputs = tvec![];
    for (ix, fact) in scan_input_facts(state).into_iter().enumerate() {
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
    let y = model.wire_node(
        "scan",
        SelectiveScan {
            delta_softplus: true,
        },
        &inputs,
    )?;
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
    let mut model = translated_scan_model(16, &[])?;
    run_scans_on_gpu(&mut model)?;
    assert!(!model.nodes().iter().any(|n| n.op_is::<SelectiveScan>()));
    let scans: Vec<&TypedNode> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<CudaSelectiveScan>())
        .collect();
    assert_eq!(scans.len(), 1);
    for input in &scans[0].inputs {
        let producer = model.node(input.node);
        assert!(
            producer.name.starts_with("gpu_op"),
            "scan input from {}",
            producer.name
        );
        assert!(model.outlet_fact(*input)?.as_device_fact().is_some());
    }
    let y = model.outlet_fact(OutletId::new(scans[0].id, 0))?;
    assert_eq!(y.to_device_fact()?.shape, f32::fact([1, 8, 5]).shape);
    // The scan's output feeds the next GPU op directly: the one copy to the
    // host left is the model output's.
    assert_eq!(count_syncs(&model, DeviceSyncKind::ToHost), 1);
    assert_eq!(model.output_fact(0)?, &f32::fact([1, 8, 5]));
    Ok(())
}

#[test]
fn rewrite_copies_inputs_left_on_the_host_to_the_device() -> TractResult<()> {
    let mut model = translated_scan_model(16, &[2, 5])?;
    run_scans_on_gpu(&mut model)?;
    let scan = model
        .nodes()
        .iter()
        .find(|n| n.op_is::<CudaSelectiveScan>())
        .expect("the scan on the GPU");
    for ix in [2, 5] {
        let producer = model.node(scan.inputs[ix].node);
        assert_eq!(
            producer.op_as::<DeviceSync>().map(|s| s.kind),
            Some(DeviceSyncKind::ToDevice),
            "input {ix} from {}",
            producer.name
        );
        assert_eq!(
            model.node(producer.inputs[0].node).name,
            format!("input{ix}")
        );
    }
    Ok(())
}

#[test]
fn rewrite_leaves_scans_with_too_many_states_on_the_cpu() -> TractResult<()> {
    let mut model = translated_scan_model(MAX_STATE + 1, &[])?;
    run_scans_on_gpu(&mut model)?;
    assert!(model.nodes().iter().any(|n| n.op_is::<SelectiveScan>()));
    assert!(!model.nodes().iter().any(|n| n.op_is::<CudaSelectiveScan>()));
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
        let want = problem.run(reference());
        // GPU expf is not the CPU's and the GPU contracts to FMA.
        for (at, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "{dims:?}: y[{at}] = {g} on the GPU, reference {w}"
            );
        }
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
    Ok(())
}
