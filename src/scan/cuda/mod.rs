//! The selective scan on an NVIDIA GPU (the `cuda` feature).
//!
//! tract-cuda translates the ops it knows into GPU ops and leaves every other
//! op, `SelectiveScan` included, on the CPU between `DeviceSync` copies: its
//! table of GPU translations is private to it. [`run_scans_on_gpu`] then puts
//! a [`CudaSelectiveScan`] in place of each such scan. That op reads
//! tract-cuda's device tensors in place and runs `selective_scan.cu`
//! (compiled once per process with NVRTC) on tract-cuda's stream, so the
//! scan's inputs and output never leave the GPU. [`launch`] holds what is
//! decided before a launch: arguments and grid. A version 2
//! `SelectiveScan2D` reaches it written back in version 1's form
//! ([`lower_to_version_1`](crate::scan::op::lower_to_version_1)).

pub mod launch;

use super::kernel::ScanDims;
use super::op::SelectiveScan;
use cudarc::driver::{CudaContext, CudaFunction, PushKernelArg};
use launch::{ScanLaunch, KERNEL_NAME, KERNEL_SOURCE, MAX_STATE};
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

    /// Checks the inputs as the CPU op does, and that they are dense, as the
    /// kernel indexes them; returns the scan's dims.
    fn dims(&self, inputs: &[&DeviceTensor]) -> TractResult<ScanDims> {
        let facts: TVec<TypedFact> = inputs
            .iter()
            .map(|t| TypedFact::dt_shape(t.datum_type(), t.shape()))
            .collect();
        self.host_op()
            .output_facts(&facts.iter().collect::<TVec<_>>())?;
        for tensor in inputs {
            ensure!(
                tensor.strides() == &*Tensor::natural_strides(tensor.shape()),
                "{} needs dense inputs, got strides {:?} for shape {:?}",
                self.name(),
                tensor.strides(),
                tensor.shape()
            );
        }
        let (u, b) = (inputs[0].shape(), inputs[3].shape());
        Ok(ScanDims {
            batch: u[0],
            channels: u[1],
            groups: b[1],
            state: b[2],
            len: u[2],
        })
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
        let inputs = inputs
            .iter()
            .map(|t| t.to_device_tensor())
            .collect::<TractResult<TVec<_>>>()?;
        let dims = self.dims(&inputs)?;
        let launch = ScanLaunch::new(&dims, self.delta_softplus)?;
        let y = tract_gpu::turn_handler::make_tensor_for_node(
            ctx,
            f32::datum_type(),
            inputs[0].shape(),
        )?;
        if y.len() > 0 {
            tract_cuda::with_cuda_stream(|stream| {
                let kernel = kernel(stream.context())?;
                let views: TVec<_> = inputs
                    .iter()
                    .map(|t| tract_cuda::kernels::get_cuda_view(t))
                    .collect();
                let mut y_view = tract_cuda::kernels::get_cuda_view_mut(&y);
                let mut args = stream.launch_builder(kernel);
                for view in &views {
                    args.arg(view);
                }
                args.arg(&mut y_view);
                for value in &launch.scalar_args {
                    args.arg(value);
                }
                // SAFETY: the arguments follow the kernel's signature: seven
                // f32 inputs and the f32 output, dense and of the shapes
                // `dims` checked, then its five ints; `ScanLaunch` checked
                // that every index fits the kernel's ints, and its grid
                // spans exactly the batch items and groups.
                unsafe { args.launch(launch.config()) }?;
                Ok(())
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

/// The kernel, compiled and loaded into `context` on first use. tract-cuda
/// has one context per process, so one function serves every call.
fn kernel(context: &Arc<CudaContext>) -> TractResult<&'static CudaFunction> {
    static KERNEL: OnceLock<CudaFunction> = OnceLock::new();
    if let Some(function) = KERNEL.get() {
        return Ok(function);
    }
    let ptx = cudarc::nvrtc::compile_ptx(KERNEL_SOURCE)
        .map_err(|e| format_err!("NVRTC cannot compile {KERNEL_NAME}: {e:?}"))?;
    let function = context
        .load_module(ptx)?
        .load_function(KERNEL_NAME)
        .with_context(|| format!("loading {KERNEL_NAME}"))?;
    Ok(KERNEL.get_or_init(|| function))
}

/// Compiles and loads the kernel now, so that a broken NVRTC shows up when
/// the model is prepared rather than at its first run.
pub fn compile_kernel() -> TractResult<()> {
    tract_cuda::with_cuda_stream(|stream| kernel(stream.context()).map(drop))
}

/// Puts a [`CudaSelectiveScan`] in place of every `SelectiveScan` of a model
/// tract-cuda has translated, fed by its inputs' device tensors, then removes
/// the to-host-and-back copies this leaves. A scan with more than
/// [`MAX_STATE`] states (or a symbolic count) stays on the CPU.
pub fn run_scans_on_gpu(model: &mut TypedModel) -> TractResult<()> {
    Rewriter::default()
        .with_rule_for("fer-edge-scan-on-gpu", scan_on_gpu)
        .rewrite(&(), model)?;
    rewire_syncs(model)
}

/// The patch for one scan. An input that tract-cuda copied to the host is
/// taken from before the copy; any other (a constant, or the output of an op
/// left on the CPU) is copied to the device, a small copy next to the scan's.
fn scan_on_gpu(
    _ctx: &(),
    model: &TypedModel,
    node: &TypedNode,
    name: &str,
    op: &SelectiveScan,
) -> TractResult<Option<TypedModelPatch>> {
    let state = &model.outlet_fact(node.inputs[3])?.shape[2];
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
    let y = patch.wire_node(
        name,
        CudaSelectiveScan {
            delta_softplus: op.delta_softplus,
        },
        &device_inputs,
    )?;
    let y_on_host = patch.wire_node(
        format!("{name}.to-host"),
        DeviceSync::new(DeviceSyncKind::ToHost),
        &y,
    )?;
    patch.shunt_outside(model, node.id.into(), y_on_host[0])?;
    Ok(Some(patch))
}
