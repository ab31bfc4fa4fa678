//! Where the network runs: the `auto|cpu|cuda` choice of `--device` (and of
//! the config file), CUDA detection, and the fall back to the CPU.
//!
//! With the `cuda` feature a CUDA plan is tract-cuda's translation of the
//! model with fer-edge's scan kernels in it (`scan::cuda`), for both
//! versions of the scan op.
//! tract-cuda loads the NVIDIA driver and libraries at run time; they are
//! probed first (by dlopen, before anything touches cudarc, which panics
//! without them), so a machine without a GPU gets an error, or with `auto`
//! one warning and the CPU plan.
//!
//! On the CPU, [`avoid_faulty_cpu_kernels`] keeps tract away from its Intel
//! AMX int8 kernels, which read past the end of their packed operand.

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

/// The edit of tract's detected CPU features that keeps its AMX int8 kernels
/// out of the kernel pool, in `TRACT_CPU_ISA`'s syntax.
pub const WITHOUT_AMX_INT8: &str = "-amx-int8";

/// Takes tract-linalg 0.23.9's Intel AMX int8 matmul kernels out of use, on
/// x86_64; a no-op elsewhere. Runs before tract first probes the CPU (the
/// probe is cached for the life of the process), so every model loads
/// through it: [`crate::infer::Model::load_on`] calls it first.
///
/// The fault: `avx512amx_mmm_i32_16x16` (and its 8x8 sibling) load the B
/// operand in AMX tiles of 64 K-values per step, but B is packed as
/// `PackedI8K4`, whose panels pad K to a multiple of 4 only. When K is not a
/// multiple of 64 (a 3x3 conv over 8 channels has K = 72), the last tile
/// load reads up to 960 bytes past the last panel. The extra values meet
/// A's zero padding, so results stay right; but when the packed buffer ends
/// near an unmapped page (more likely in a worker thread's malloc arena)
/// the read faults: the SIGSEGV in `tileloaddt1` seen on Sapphire Rapids.
///
/// The setting is tract's process-wide default for `TRACT_CPU_ISA`: an
/// operator who sets that variable still decides. Idempotent.
pub fn avoid_faulty_cpu_kernels() {
    #[cfg(target_arch = "x86_64")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if let Err(e) = tract_core::knobs::set_config_global("TRACT_CPU_ISA", WITHOUT_AMX_INT8)
            {
                log::warn!("cannot keep tract off its AMX int8 kernels: {e}");
            } else if cpu_has_amx_int8() && std::env::var_os("TRACT_CPU_ISA").is_none() {
                log::info!(
                    "this CPU has AMX int8; tract's AMX int8 kernels stay unused \
                     (they can read past their operand and crash): AVX-512 kernels instead"
                );
            }
        });
    }
}

/// CPUID leaf 7: AMX-TILE (EDX bit 24) and AMX-INT8 (EDX bit 25).
#[cfg(target_arch = "x86_64")]
fn cpu_has_amx_int8() -> bool {
    const AMX_TILE_AND_INT8: u32 = 0b11 << 24;
    #[allow(unused_unsafe)] // safe since Rust 1.89
    // SAFETY: CPUID leaf 7 exists on every x86_64 CPU this runs on.
    let leaf7 = unsafe { std::arch::x86_64::__cpuid_count(7, 0) };
    leaf7.edx & AMX_TILE_AND_INT8 == AMX_TILE_AND_INT8
}

fn prepare_cpu(mut model: TypedModel) -> TractResult<Arc<TypedRunnableModel>> {
    crate::conv::declutter(&mut model)?;
    crate::conv::use_direct_convolutions(&mut model)?;
    let mut model = model.into_optimized()?;
    give_constants_natural_strides(&mut model)?;
    model.into_runnable()
}

/// Gives every constant of `model` whose strides differ from its shape's
/// natural ones only on size-1 axes the natural ones; returns how many.
///
/// tract's optimiser reshapes some constants (a convolution's bias, as
/// `[1, C, 1, 1]`) by `Tensor::insert_axis`, which gives the new size-1 axis
/// its neighbour's stride. The layout is the same, but `OptBinChain` checks
/// for natural strides and otherwise adds element by element through
/// ndarray's strided loop: on the shipped model, four chains that add a
/// bias took 1.2 ms of a 25 ms frame (AMD EPYC, 1 thread).
pub fn give_constants_natural_strides(model: &mut TypedModel) -> TractResult<usize> {
    use tract_core::ops::konst::Const;
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let Some(konst) = model.node(id).op_as::<Const>() else {
            continue;
        };
        let tensor = konst.val();
        let natural = Tensor::natural_strides(tensor.shape());
        let same_layout = tensor
            .shape()
            .iter()
            .zip(tensor.strides().iter().zip(&natural))
            .all(|(&size, (stride, natural))| size == 1 || stride == natural);
        if konst.exotic_fact().is_some() || tensor.strides() == &*natural || !same_layout {
            continue;
        }
        // A copy of a tensor has the natural strides of its shape.
        let tensor = Arc::new(tensor.deep_clone());
        let node = model.node_mut(id);
        node.op = Box::new(Const::new(tensor.clone())?);
        node.outputs[0].fact.konst = Some(tensor);
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(not(feature = "cuda"))]
fn prepare_cuda(_model: TypedModel) -> TractResult<Arc<TypedRunnableModel>> {
    Err(DeviceError::CudaNotBuilt.into())
}

/// tract-cuda's own runtime (`CudaRuntime::prepare_with_options`), with the
/// scans put on the GPU between its translation and its optimisation.
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
        crate::scan::cuda::compile_kernels()?;
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

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn tract_runs_without_its_amx_int8_kernels_unless_the_operator_says_otherwise() {
        avoid_faulty_cpu_kernels();
        if std::env::var_os("TRACT_CPU_ISA").is_some() {
            eprintln!("SKIPPED: TRACT_CPU_ISA is set here, and the operator's setting wins");
            return;
        }
        let isa = tract_linalg::knobs::TRACT_CPU_ISA.get();
        assert_eq!(isa.as_deref(), Some(WITHOUT_AMX_INT8));
        let native = tract_linalg::isa::native();
        assert!(!native
            .iter()
            .any(|i| i == tract_linalg::isa::Isa::X86_64AmxInt8));
    }

    /// The cause of the AMX fault, in tract's own packing: a B panel of the
    /// 16x16 AMX kernel holds K rounded up to 4, while the kernel reads K
    /// rounded up to 64. When this fails, tract pads B for its AMX tiles and
    /// `avoid_faulty_cpu_kernels` can go (after a run on an AMX machine).
    #[test]
    fn tract_still_packs_less_b_than_its_amx_kernel_reads() {
        let packing = tract_linalg::pack::PackedI8K4::new(16);
        let k: usize = 72; // a 3x3 conv over 8 channels
        let amx_reads = k.div_ceil(64) * 64 * 16;
        assert_eq!(packing.single_panel_len(k), 72 * 16);
        assert!(packing.single_panel_len(k) < amx_reads);
    }

    /// Whether a constant's strides differ from its shape's natural ones.
    fn unnatural(tensor: &Tensor) -> bool {
        tensor.strides() != &*Tensor::natural_strides(tensor.shape())
    }

    #[test]
    fn constants_get_natural_strides_and_keep_their_values() {
        use tract_core::ops::konst::Const;
        // A bias reshaped as tract's optimiser does: strides [1, 1, 1, 1].
        let mut bias = tensor1(&[1f32, 2., 3.]).into_shape(&[3, 1, 1]).unwrap();
        bias.insert_axis(0).unwrap();
        assert!(unnatural(&bias), "{:?}", bias.strides());
        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, 3, 2, 2])).unwrap();
        let values = |t: &Tensor| {
            t.try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .to_vec()
        };
        let (shape, want) = (bias.shape().to_vec(), values(&bias));
        let b = model.add_const("b", bias.clone()).unwrap();
        // (a copy of a tensor, as `add_const` makes, has natural strides:
        // put the bias itself back)
        model.node_mut(b.node).op = Box::new(Const::new(Arc::new(bias)).unwrap());
        let sum = model
            .wire_node("add", tract_core::ops::math::add(), &[x, b])
            .unwrap();
        model.select_output_outlets(&sum).unwrap();
        assert_eq!(give_constants_natural_strides(&mut model).unwrap(), 1);
        let konst = model.node(b.node).op_as::<Const>().unwrap().val();
        assert!(!unnatural(konst), "{:?}", konst.strides());
        assert_eq!((konst.shape(), values(konst)), (&shape[..], want));
        let fact = model.outlet_fact(b).unwrap().konst.clone().unwrap();
        assert!(!unnatural(&fact));
        assert_eq!(give_constants_natural_strides(&mut model).unwrap(), 0);
    }

    #[test]
    fn the_optimised_shipped_model_keeps_no_unnatural_constant() {
        use tract_core::ops::konst::Const;
        avoid_faulty_cpu_kernels();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/fer-yolo-mamba-nano.onnx"
        );
        let model = crate::infer::onnx().model_for_path(path).unwrap();
        let mut model = model.into_typed().unwrap();
        crate::conv::declutter(&mut model).unwrap();
        crate::conv::use_direct_convolutions(&mut model).unwrap();
        let mut model = model.into_optimized().unwrap();
        let replaced = give_constants_natural_strides(&mut model).unwrap();
        let left: Vec<_> = model
            .nodes()
            .iter()
            .filter(|n| n.op_as::<Const>().is_some_and(|k| unnatural(k.val())))
            .map(|n| &n.name)
            .collect();
        println!("constants given natural strides: {replaced}");
        assert!(left.is_empty(), "{left:?}");
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
