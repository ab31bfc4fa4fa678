//! Where the network runs: the `auto|cpu|cuda` choice of `--device` (and of
//! the config file), CUDA detection, and the fall back to the CPU.
//!
//! With the `cuda` feature a CUDA plan is tract-cuda's translation of the
//! model with fer-edge's scan kernel in it (`scan::cuda`).
//! tract-cuda loads the NVIDIA driver and libraries at run time; they are
//! probed first (by dlopen, before anything touches cudarc, which panics
//! without them), so a machine without a GPU gets an error, or with `auto`
//! one warning and the CPU plan.

use tract_onnx::prelude::*;

/// The `--device` setting.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// CUDA when this build has it and a GPU is usable, else the CPU.
    #[default]
    Auto,
    /// The CPU: tract's kernels and fer-edge's SIMD scan.
    Cpu,
    /// An NVIDIA GPU; an error when none is usable.
    Cuda,
}

/// Why the network cannot run on the device asked for.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// `cuda` asked of a build without the feature.
    #[error("this fer-edge was built without CUDA: rebuild it with `--features cuda`")]
    CudaNotBuilt,
    /// No driver, a missing library, no GPU, or a failure setting it up.
    #[error("no usable CUDA GPU: {0}")]
    CudaUnavailable(String),
}

impl Device {
    /// The runnable plan of `model` (typed, not yet optimised) on this
    /// device. `Auto` falls back to the CPU, with one warning, when this
    /// build has CUDA but cannot use it.
    pub fn prepare(self, model: TypedModel) -> TractResult<Arc<TypedRunnableModel>> {
        match self {
            Device::Cpu => prepare_cpu(model),
            Device::Cuda => prepare_cuda(model),
            Device::Auto if cfg!(feature = "cuda") => prepare_cuda(model.clone()).or_else(|e| {
                log::warn!("running on the CPU: {}", one_line(&e));
                prepare_cpu(model)
            }),
            Device::Auto => prepare_cpu(model),
        }
    }
}

fn prepare_cpu(model: TypedModel) -> TractResult<Arc<TypedRunnableModel>> {
    model.into_optimized()?.into_runnable()
}

#[cfg(not(feature = "cuda"))]
fn prepare_cuda(_model: TypedModel) -> TractResult<Arc<TypedRunnableModel>> {
    Err(DeviceError::CudaNotBuilt.into())
}

/// tract-cuda's own runtime (`CudaRuntime::prepare_with_options`), with the
/// scan put on the GPU between its translation and its optimisation.
#[cfg(feature = "cuda")]
fn prepare_cuda(model: TypedModel) -> TractResult<Arc<TypedRunnableModel>> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use tract_core::transform::ModelTransform;

    tract_cuda::utils::ensure_cuda_runtime_dependencies("CUDA libraries")
        .map_err(|e| DeviceError::CudaUnavailable(one_line(&e)))?;
    // tract-cuda panics where it cannot set up its context or compile its
    // kernels (a GPU the driver cannot open, missing CUDA headers).
    let prepared = catch_unwind(AssertUnwindSafe(|| -> TractResult<_> {
        let mut model = model.into_decluttered()?;
        tract_cuda::CudaTransform.transform(&mut model)?;
        crate::scan::cuda::run_scans_on_gpu(&mut model)?;
        crate::scan::cuda::compile_kernel()?;
        model.optimize()?;
        let options = RunOptions {
            skip_order_opt_ram: true,
            ..RunOptions::default()
        };
        let mut plan = TypedSimplePlan::build(model, &options)?;
        if let Some(arena) = tract_gpu::turn_handler::DeviceTurnHandler::for_plan(&plan, None)? {
            plan = plan.with_turn_handler(arena);
        }
        // The constants were uploaded asynchronously on this thread's stream.
        tract_cuda::with_cuda_stream(|stream| Ok(stream.synchronize()?))?;
        Ok(Arc::new(plan))
    }));
    let plan = prepared.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("tract-cuda panicked");
        Err(DeviceError::CudaUnavailable(message.to_owned()).into())
    })?;
    log::info!("running the network on the CUDA GPU");
    Ok(plan)
}

/// An error with its causes on one line, for a log line.
fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(|cause| cause.to_string())
        .collect::<Vec<_>>()
        .join(": ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The CPU, for benchmark headers: its model (`/proc/cpuinfo`'s model name,
/// or on ARM the board and the core type) and the cores this process may use.
pub fn cpu_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{}, {cores} cores", cpu_model(&cpuinfo))
}

/// The CPU model named by a `/proc/cpuinfo` text.
fn cpu_model(cpuinfo: &str) -> String {
    let field = |key: &str| {
        cpuinfo.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            (name.trim() == key).then(|| value.trim().to_string())
        })
    };
    if let Some(name) = field("model name").filter(|name| !name.is_empty()) {
        return name;
    }
    // ARM: the core type from its part number, and the board when named.
    let core = field("CPU part").map(|part| match part.as_str() {
        "0xd03" => "Cortex-A53".to_string(),
        "0xd04" => "Cortex-A35".to_string(),
        "0xd05" => "Cortex-A55".to_string(),
        "0xd07" => "Cortex-A57".to_string(),
        "0xd08" => "Cortex-A72".to_string(),
        "0xd09" => "Cortex-A73".to_string(),
        "0xd0b" => "Cortex-A76".to_string(),
        "0xd42" => "Cortex-A78AE".to_string(),
        other => format!("ARM part {other}"),
    });
    match (field("Model"), core) {
        (Some(board), Some(core)) => format!("{board}, {core}"),
        (None, Some(core)) => core,
        (Some(board), None) => board,
        (None, None) => std::env::consts::ARCH.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn config_files_and_the_command_line_use_the_same_lowercase_words() {
        for (word, device) in [
            ("auto", Device::Auto),
            ("cpu", Device::Cpu),
            ("cuda", Device::Cuda),
        ] {
            let from_config: Device = serde_json::from_str(&format!("\"{word}\"")).unwrap();
            assert_eq!(from_config, device);
            assert_eq!(Device::from_str(word, false), Ok(device));
        }
        assert!(serde_json::from_str::<Device>("\"gpu\"").is_err());
        assert_eq!(Device::default(), Device::Auto);
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_is_an_error_in_a_build_without_it() {
        let err = Device::Cuda.prepare(TypedModel::default()).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<DeviceError>(),
            Some(DeviceError::CudaNotBuilt)
        ));
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }

    #[test]
    fn names_x86_models_and_arm_boards_with_their_cores() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\n";
        assert_eq!(cpu_model(x86), "AMD EPYC 9B14");
        let pi4 = "processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n\
                   Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n";
        assert_eq!(cpu_model(pi4), "Raspberry Pi 4 Model B Rev 1.4, Cortex-A72");
        assert_eq!(cpu_model("CPU part\t: 0xd0b\n"), "Cortex-A76");
        assert_eq!(cpu_model(""), std::env::consts::ARCH);
    }
}
