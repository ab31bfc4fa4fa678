//! The selective scans on an NVIDIA GPU (the `cuda` feature).
//!
//! tract-cuda translates the ops it knows into GPU ops and leaves every other
//! op, fer-edge's scans included, on the CPU between `DeviceSync` copies: its
//! table of GPU translations is private to it. [`run_scans_on_gpu`] then puts
//! a [`CudaSelectiveScan`] in place of each version 1 `SelectiveScan`, and a
//! [`CudaSelectiveScan2D`] in place of each `SelectiveScan2D` (versions 2
//! and 3: in version 3's form the kernel projects each channel's delta from
//! dt_low and dt_weight itself, as the CPU kernels do).
//! These ops read tract-cuda's device tensors in place and run the kernels of
//! `selective_scan.cu` (compiled once per process with NVRTC) on
//! tract-cuda's stream, so the scans' inputs and outputs never leave the GPU.
//! The 2-D scan walks SS2D's K directions itself, as the CPU kernel does
//! ([`cross_scan`](crate::scan::kernel::cross_scan)): one thread per batch
//! item, direction and channel scans into a scratch tensor, then a second
//! kernel adds the directions in order, so its sums are the CPU's. [`launch`]
//! holds what is decided before a launch: arguments and grids.

pub mod launch;

use super::kernel::cross_scan::GridDims;
use super::kernel::ScanDims;
use super::op::{SelectiveScan, SelectiveScan2D};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, PushKernelArg};
use launch::{
    KernelLaunch, Scan2dLaunch, Scan2dPass, ScanLaunch, KERNEL_2D_LOW_RANK_NAME, KERNEL_2D_NAME,
    KERNEL_NAME, KERNEL_SOURCE, MAX_STATE, MERGE_KERNEL_NAME,
};
use std::sync::OnceLock;
use tract_core::internal::*;
use tract_gpu::rewrite_rules::rewire_syncs::rewire_syncs;
use tract_gpu::sync::{DeviceSync, DeviceSyncKind};
use tract_gpu::tensor::{DeviceTensor, DeviceTensorExt};

/// `SelectiveScan` on device tensors, run by the CUDA kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CudaSelectiveScan {
    pub delta_softplus: bool,
}

impl CudaSelectiveScan {
    /// The CPU op of the same contract, whose shape checks this op reuses.
    fn host_op(&self) -> SelectiveScan {
        SelectiveScan {
            delta_softplus: self.delta_softplus,
        }
    }

    /// The scan's dims, from inputs [`checked_inputs`] accepted.
    fn dims(inputs: &[&DeviceTensor]) -> ScanDims {
        let (u, b) = (inputs[0].shape(), inputs[3].shape());
        ScanDims {
            batch: u[0],
            channels: u[1],
            groups: b[1],
            state: b[2],
            len: u[2],
        }
    }
}

impl Op for CudaSelectiveScan {
    fn name(&self) -> StaticName {
        "CudaSelectiveScan".into()
    }

    op_as_typed_op!();
}

impl EvalOp for CudaSelectiveScan {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let inputs = checked_inputs(self, &self.host_op(), &inputs)?;
        let launch = ScanLaunch::new(&Self::dims(&inputs), self.delta_softplus)?;
        let y = tract_gpu::turn_handler::make_tensor_for_node(
            ctx,
            f32::datum_type(),
            inputs[0].shape(),
        )?;
        if y.len() > 0 {
            tract_cuda::with_cuda_stream(|stream| {
                let kernels = kernels(stream.context())?;
                // SAFETY: the kernel takes the seven f32 inputs and the f32
                // output, dense and of the shapes the host op checked, then
                // its five ints; `ScanLaunch` checked that every index fits
                // the kernel's ints, and its grid spans exactly the batch
                // items and groups.
                unsafe { launch_kernel(stream, &kernels.scan, &inputs, &y, &launch) }
            })?;
        }
        Ok(tvec!(y.into_tensor().into_tvalue()))
    }
}

impl TypedOp for CudaSelectiveScan {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        tract_gpu::utils::facts_to_device_facts(inputs, |facts| self.host_op().output_facts(facts))
    }

    as_op!();
}

/// `SelectiveScan2D` on device tensors, run by the CUDA kernels: the scan of
/// every direction into a scratch tensor shaped as version 2's delta, then
/// their sum.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CudaSelectiveScan2D {
    pub delta_softplus: bool,
    /// Version 3's form: inputs `dt_low` and `dt_weight` instead of `delta`.
    pub low_rank: bool,
}

impl CudaSelectiveScan2D {
    /// The CPU op of the same contract, whose shape checks this op reuses.
    fn host_op(&self) -> SelectiveScan2D {
        SelectiveScan2D {
            delta_softplus: self.delta_softplus,
            low_rank: self.low_rank,
        }
    }

    /// The scan's dims and, in version 3's form, R, from inputs
    /// [`checked_inputs`] accepted.
    fn dims(&self, inputs: &[&DeviceTensor]) -> TractResult<(GridDims, Option<usize>)> {
        let shapes: TVec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
        let types: TVec<DatumType> = inputs.iter().map(|t| t.datum_type()).collect();
        self.host_op().dims(&shapes, &types)
    }
}

impl Op for CudaSelectiveScan2D {
    fn name(&self) -> StaticName {
        "CudaSelectiveScan2D".into()
    }

    op_as_typed_op!();
}

impl EvalOp for CudaSelectiveScan2D {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let inputs = checked_inputs(self, &self.host_op(), &inputs)?;
        let (dims, rank) = self.dims(&inputs)?;
        let launch = Scan2dLaunch::new(&dims, rank, self.delta_softplus)?;
        let y = tract_gpu::turn_handler::make_tensor_for_node(
            ctx,
            f32::datum_type(),
            inputs[0].shape(),
        )?;
        if y.len() > 0 {
            // Outside the plan's memory arena, which holds node outputs
            // only; freed in stream order after the second launch.
            let partial = DeviceTensor::uninitialized_dt(f32::datum_type(), &launch.partial_shape)?;
            tract_cuda::with_cuda_stream(|stream| {
                let kernels = kernels(stream.context())?;
                // SAFETY: the scan kernel of the op's form takes its seven
                // (version 2) or eight (version 3) f32 inputs, dense and of
                // the shapes the host op checked, and `partial`, of version
                // 2's delta's shape, then its six or seven ints; the sum
                // takes `partial` and y, then its two ints. `Scan2dLaunch`
                // checked that every index fits the kernels' ints and sized
                // the grids: the scan's spans the batch items, directions
                // and channels, the sum's every output. The second launch,
                // on the same stream, reads `partial` after the first wrote
                // it.
                unsafe {
                    match &launch.scan {
                        Scan2dPass::Rows(scan) => {
                            launch_kernel(stream, &kernels.scan_2d, &inputs, &partial, scan)?
                        }
                        Scan2dPass::LowRank(scan) => launch_kernel(
                            stream,
                            &kernels.scan_2d_low_rank,
                            &inputs,
                            &partial,
                            scan,
                        )?,
                    }
                    launch_kernel(stream, &kernels.merge, &[&partial], &y, &launch.merge)
                }
            })?;
        }
        Ok(tvec!(y.into_tensor().into_tvalue()))
    }
}

impl TypedOp for CudaSelectiveScan2D {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        tract_gpu::utils::facts_to_device_facts(inputs, |facts| self.host_op().output_facts(facts))
    }

    as_op!();
}

/// `inputs` as device tensors, after `host`'s shape checks (the CPU op of
/// the same contract) and a check that they are dense, as the kernels index
/// them.
fn checked_inputs<'a>(
    op: &dyn Op,
    host: &dyn TypedOp,
    inputs: &'a [TValue],
) -> TractResult<TVec<&'a DeviceTensor>> {
    let inputs = inputs
        .iter()
        .map(|t| t.to_device_tensor())
        .collect::<TractResult<TVec<_>>>()?;
    let facts: TVec<TypedFact> = inputs
        .iter()
        .map(|t| TypedFact::dt_shape(t.datum_type(), t.shape()))
        .collect();
    host.output_facts(&facts.iter().collect::<TVec<_>>())?;
    for tensor in &inputs {
        ensure!(
            tensor.strides() == &*Tensor::natural_strides(tensor.shape()),
            "{} needs dense inputs, got strides {:?} for shape {:?}",
            op.name(),
            tensor.strides(),
            tensor.shape()
        );
    }
    Ok(inputs)
}

/// Launches `function` on `stream` with the device pointers of `inputs`,
/// then `output`'s, then `launch`'s ints, on `launch`'s grid.
///
/// # Safety
///
/// The pointers and ints must follow the kernel's signature, and the
/// tensors have the shapes the kernel indexes for those ints over that grid.
unsafe fn launch_kernel<const INTS: usize>(
    stream: &Arc<CudaStream>,
    function: &CudaFunction,
    inputs: &[&DeviceTensor],
    output: &DeviceTensor,
    launch: &KernelLaunch<INTS>,
) -> TractResult<()> {
    let views: TVec<_> = inputs
        .iter()
        .map(|t| tract_cuda::kernels::get_cuda_view(t))
        .collect();
    let mut output_view = tract_cuda::kernels::get_cuda_view_mut(output);
    let mut args = stream.launch_builder(function);
    for view in &views {
        args.arg(view);
    }
    args.arg(&mut output_view);
    for value in &launch.scalar_args {
        args.arg(value);
    }
    // SAFETY: the caller's guarantee.
    unsafe { args.launch(launch.config()) }?;
    Ok(())
}

/// The functions of `selective_scan.cu`'s module.
struct Kernels {
    scan: CudaFunction,
    scan_2d: CudaFunction,
    scan_2d_low_rank: CudaFunction,
    merge: CudaFunction,
}

/// The kernels, compiled and loaded into `context` on first use. tract-cuda
/// has one context per process, so one module serves every call.
fn kernels(context: &Arc<CudaContext>) -> TractResult<&'static Kernels> {
    static KERNELS: OnceLock<Kernels> = OnceLock::new();
    if let Some(kernels) = KERNELS.get() {
        return Ok(kernels);
    }
    let ptx = cudarc::nvrtc::compile_ptx(KERNEL_SOURCE)
        .map_err(|e| format_err!("NVRTC cannot compile selective_scan.cu: {e:?}"))?;
    let module = context.load_module(ptx)?;
    let function = |name: &str| {
        module
            .load_function(name)
            .with_context(|| format!("loading {name}"))
    };
    let kernels = Kernels {
        scan: function(KERNEL_NAME)?,
        scan_2d: function(KERNEL_2D_NAME)?,
        scan_2d_low_rank: function(KERNEL_2D_LOW_RANK_NAME)?,
        merge: function(MERGE_KERNEL_NAME)?,
    };
    Ok(KERNELS.get_or_init(|| kernels))
}

/// Compiles and loads the kernels now, so that a broken NVRTC shows up when
/// the model is prepared rather than at its first run.
pub fn compile_kernels() -> TractResult<()> {
    tract_cuda::with_cuda_stream(|stream| kernels(stream.context()).map(drop))
}

/// Puts a [`CudaSelectiveScan`] in place of every `SelectiveScan`, and a
/// [`CudaSelectiveScan2D`] in place of every `SelectiveScan2D`, of a model
/// tract-cuda has translated, fed by their inputs' device tensors, then
/// removes the to-host-and-back copies this leaves. A scan with more than
/// [`MAX_STATE`] states (or a symbolic count) stays on the CPU.
pub fn run_scans_on_gpu(model: &mut TypedModel) -> TractResult<()> {
    Rewriter::default()
        .with_rule_for(
            "fer-edge-scan-on-gpu",
            |_: &(), model, node, name, op: &SelectiveScan| {
                let delta_softplus = op.delta_softplus;
                move_to_gpu(model, node, name, CudaSelectiveScan { delta_softplus })
            },
        )
        .with_rule_for(
            "fer-edge-scan-2d-on-gpu",
            |_: &(), model, node, name, op: &SelectiveScan2D| {
                let gpu_op = CudaSelectiveScan2D {
                    delta_softplus: op.delta_softplus,
                    low_rank: op.low_rank,
                };
                move_to_gpu(model, node, name, gpu_op)
            },
        )
        .rewrite(&(), model)?;
    rewire_syncs(model)
}

/// The patch that puts `gpu_op` in place of the scan `node` (`SelectiveScan`
/// or `SelectiveScan2D`: in every form their last four inputs are Bs, Cs, D,
/// delta_bias, with N at dimension 2 of Bs). An input that tract-cuda copied
/// to the host is taken from before the copy; any other (a constant, or the
/// output of an op left on the CPU) is copied to the device, a small copy
/// next to the scan's.
fn move_to_gpu(
    model: &TypedModel,
    node: &TypedNode,
    name: &str,
    gpu_op: impl Into<Box<dyn TypedOp>>,
) -> TractResult<Option<TypedModelPatch>> {
    let bs = node.inputs[node.inputs.len() - 4];
    let state = &model.outlet_fact(bs)?.shape[2];
    rule_if!(state.to_usize().is_ok_and(|n| n <= MAX_STATE));
    let mut patch = TypedModelPatch::default();
    let mut device_inputs = tvec![];
    for (ix, &input) in node.inputs.iter().enumerate() {
        let producer = model.node(input.node);
        let copied_from_device = producer
            .op_as::<DeviceSync>()
            .is_some_and(|sync| sync.kind == DeviceSyncKind::ToHost);
        let outlet = if copied_from_device {
            patch.tap_model(model, producer.inputs[0])?
        } else {
            let host = patch.tap_model(model, input)?;
            patch.wire_node(
                format!("{name}.to-device-{ix}"),
                DeviceSync::new(DeviceSyncKind::ToDevice),
                &[host],
            )?[0]
        };
        device_inputs.push(outlet);
    }
    let y = patch.wire_node(name, gpu_op, &device_inputs)?;
    let y_on_host = patch.wire_node(
        format!("{name}.to-host"),
        DeviceSync::new(DeviceSyncKind::ToHost),
        &y,
    )?;
    patch.shunt_outside(model, node.id.into(), y_on_host[0])?;
    Ok(Some(patch))
}
