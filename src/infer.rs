//! Inference: loading an exported FER-YOLO-Mamba ONNX file into tract, with
//! the `fer_edge::SelectiveScan` op registered, and running it, frame after
//! frame, in one tract state (the ops' scratch buffers live as long as the
//! model, not one frame).

use crate::decode::level_geometry;
use crate::device::Device;
use crate::scan;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tract_linalg::multithread::{current_tract_executor, set_default_executor, Executor};
use tract_onnx::prelude::*;

/// The model built into the binary: `models/fer-yolo-mamba-nano.onnx` as it
/// was when the binary was built, used when no model file is configured.
pub const BUILT_IN_MODEL: &str = "fer-yolo-mamba-nano.onnx";
/// SHA-256 of [`BUILT_IN_MODEL`], computed by `build.rs`.
pub const BUILT_IN_MODEL_SHA256: &str = env!("FER_EDGE_BUILT_IN_MODEL_SHA256");
static BUILT_IN_ONNX: &[u8] = include_bytes!("../models/fer-yolo-mamba-nano.onnx");
/// The ONNX `metadata_props` key under which a model file carries the score
/// threshold it was tuned at (docs/model-contract.md).
pub const CONFIDENCE_METADATA_KEY: &str = "fer_edge.confidence";

/// Where a model comes from: the binary itself or an ONNX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    BuiltIn,
    File(PathBuf),
}

impl ModelSource {
    /// The file when one is named, else the built-in model.
    pub fn from_file(path: Option<&Path>) -> ModelSource {
        path.map_or(ModelSource::BuiltIn, |p| ModelSource::File(p.into()))
    }

    fn bytes(&self) -> Result<Cow<'static, [u8]>, ModelError> {
        match self {
            ModelSource::BuiltIn => Ok(Cow::Borrowed(BUILT_IN_ONNX)),
            ModelSource::File(path) => {
                std::fs::read(path)
                    .map(Cow::Owned)
                    .map_err(|error| ModelError::Read {
                        path: path.clone(),
                        error,
                    })
            }
        }
    }
}

impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::BuiltIn => write!(f, "built-in model {BUILT_IN_MODEL}"),
            ModelSource::File(path) => write!(f, "model file {}", path.display()),
        }
    }
}

/// A problem loading or running a model, naming the model and the cause.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{model} is not a valid ONNX model (corrupt or truncated?): {cause}")]
    Parse { model: ModelSource, cause: String },
    #[error("{model} uses operators fer-edge does not implement: {ops}")]
    UnsupportedOps { model: ModelSource, ops: String },
    #[error("{model} does not keep fer-edge's model contract: {cause}")]
    Contract { model: ModelSource, cause: String },
    #[error("{model} cannot be prepared for inference: {cause}")]
    Prepare { model: ModelSource, cause: String },
    #[error("{model} is not a FER-YOLO-Mamba detector: {cause}")]
    NotADetector { model: ModelSource, cause: String },
    #[error("input tensor has shape {got:?}, but the model expects {expected:?}")]
    InputShape {
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("inference failed: {0}")]
    Run(String),
}

/// The ONNX front end with fer-edge's custom ops registered.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    scan::op::register(&mut onnx);
    onnx
}

/// Uses `threads` worker threads for tract's kernels and the scan op
/// (1 = run on the calling thread). Applies process-wide.
pub fn set_threads(threads: usize) {
    let executor = if threads > 1 {
        Executor::multithread(threads)
    } else {
        Executor::SingleThread
    };
    set_default_executor(executor);
}

/// Runs `work` on every task, in parallel on the current tract executor's
/// threads (the ones [`set_threads`] chose): how fer-edge's own ops (the
/// scan, the direct convolutions) share the cores with tract's.
pub(crate) fn on_tract_threads<T: Send>(tasks: Vec<T>, work: impl Fn(T) + Send + Sync) {
    use rayon::prelude::*;
    match current_tract_executor() {
        Executor::MultiThread(pool) => pool.install(|| tasks.into_par_iter().for_each(work)),
        Executor::RayonGlobal => tasks.into_par_iter().for_each(work),
        Executor::SingleThread => tasks.into_iter().for_each(work),
    }
}

/// An optimised, runnable detector network.
#[derive(Debug)]
pub struct Model {
    /// The plan's run state, kept across frames: one frame at a time.
    state: Mutex<TypedSimpleState>,
    input_shape: [usize; 4],
    /// The file's own score threshold ([`CONFIDENCE_METADATA_KEY`]).
    confidence: Option<f32>,
    source: ModelSource,
    sha256: String,
}

impl Model {
    /// Loads, checks and optimises the model in `path` for the CPU.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        Self::load_on(&ModelSource::File(path.into()), Device::Cpu)
    }

    /// Loads and checks the model of `source` and prepares it for `device`.
    pub fn load_on(source: &ModelSource, device: Device) -> Result<Model, ModelError> {
        crate::device::avoid_faulty_cpu_kernels();
        let bytes = source.bytes()?;
        let sha256 = match source {
            ModelSource::BuiltIn => BUILT_IN_MODEL_SHA256.to_owned(),
            ModelSource::File(_) => sha256_hex(&bytes),
        };
        let parse = |e: anyhow::Error| {
            contract_error(&e, source).unwrap_or_else(|| ModelError::Parse {
                model: source.clone(),
                cause: chain(&e),
            })
        };
        let proto = onnx()
            .proto_model_for_read(&mut &bytes[..])
            .map_err(parse)?;
        let confidence = metadata_confidence(&proto).map_err(|cause| ModelError::Contract {
            model: source.clone(),
            cause,
        })?;
        let inference = onnx().model_for_proto_model(&proto).map_err(parse)?;
        let unsupported = unsupported_ops(&inference);
        if !unsupported.is_empty() {
            return Err(ModelError::UnsupportedOps {
                model: source.clone(),
                ops: unsupported,
            });
        }
        let prepare = |e: anyhow::Error| {
            contract_error(&e, source).unwrap_or_else(|| ModelError::Prepare {
                model: source.clone(),
                cause: chain(&e),
            })
        };
        let typed = inference.into_typed().map_err(prepare)?;
        let input_shape = check_detector_io(&typed).map_err(|cause| ModelError::NotADetector {
            model: source.clone(),
            cause,
        })?;
        let plan = device.prepare(typed).map_err(prepare)?;
        let state = plan.spawn().map_err(prepare)?;
        Ok(Model {
            state: Mutex::new(state),
            input_shape,
            confidence,
            source: source.clone(),
            sha256,
        })
    }

    /// `[1, 3, height, width]` of the network input.
    pub fn input_shape(&self) -> [usize; 4] {
        self.input_shape
    }

    /// `(height, width)` of the network input.
    pub fn input_size(&self) -> (usize, usize) {
        (self.input_shape[2], self.input_shape[3])
    }

    /// The score threshold the model file says it was tuned at, if it says
    /// one ([`CONFIDENCE_METADATA_KEY`]).
    pub fn confidence(&self) -> Option<f32> {
        self.confidence
    }

    /// Where this model was loaded from.
    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// SHA-256 of the ONNX bytes, lower-case hex: which model a device runs.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Runs the network on one `[1, 3, H, W]` input; returns its raw output maps.
    pub fn run(&self, input: Tensor) -> Result<Vec<Tensor>, ModelError> {
        self.run_with(input, tract_core::plan::eval)
    }

    /// Like [`Model::run`], adding each node's time and output to `profile`.
    pub fn run_profiled(
        &self,
        input: Tensor,
        profile: &mut OpProfile,
    ) -> Result<Vec<Tensor>, ModelError> {
        self.run_with(input, |context, op_state, node, inputs| {
            let start = std::time::Instant::now();
            let outputs = tract_core::plan::eval(context, op_state, node, inputs);
            let time = start.elapsed();
            let output_bytes = outputs.as_ref().map_or(0, |values| {
                values
                    .iter()
                    .map(|v| v.len() * v.datum_type().size_of())
                    .sum()
            });
            let entry = profile
                .ops
                .entry(node.op().name().into_owned())
                .or_default();
            entry.calls += 1;
            entry.time += time;
            entry.output_bytes += output_bytes;
            outputs
        })
    }

    /// Runs the plan in the kept state, evaluating each node with `eval`.
    fn run_with<Eval>(&self, input: Tensor, eval: Eval) -> Result<Vec<Tensor>, ModelError>
    where
        Eval: for<'a, 'b, 'c> FnMut(
                &'a tract_core::internal::EvalContext<'a>,
                Option<&'b mut (dyn tract_core::internal::OpState + 'static)>,
                &'c TypedNode,
                TVec<TValue>,
            ) -> TractResult<TVec<TValue>>
            + Send,
    {
        if input.shape() != self.input_shape {
            return Err(ModelError::InputShape {
                got: input.shape().to_vec(),
                expected: self.input_shape.to_vec(),
            });
        }
        // tract keeps the partial values of a run that failed or panicked
        // (poisoning the lock): they are dropped before the state runs again.
        let mut guard = self.state.lock().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            let _ = state.reset_turn();
            state
        });
        let state = &mut *guard;
        let run = move || {
            let outputs = state.run_plan_with_eval(tvec!(input.into()), eval);
            if outputs.is_err() {
                let _ = state.reset_turn();
            }
            outputs
        };
        // Run the whole plan on the worker pool: with the calling thread
        // outside it, N workers plus the caller would share N cores, and the
        // workers' spinning would slow the ops that run on one thread.
        let outputs = match current_tract_executor() {
            Executor::MultiThread(pool) => pool.install(run),
            _ => run(),
        };
        let outputs = outputs.map_err(|e| ModelError::Run(chain(&e)))?;
        Ok(outputs.into_iter().map(|t| t.into_tensor()).collect())
    }
}

/// Where a network's time goes, per kind of op (tract's op names), summed
/// over the runs of [`Model::run_profiled`].
#[derive(Debug, Default)]
pub struct OpProfile {
    pub ops: std::collections::BTreeMap<String, OpStats>,
}

/// One kind of op's share of the profiled runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpStats {
    /// Nodes of this op evaluated.
    pub calls: usize,
    pub time: std::time::Duration,
    /// Bytes of the tensors these nodes returned.
    pub output_bytes: usize,
}

/// Ops that parsed as placeholders because no implementation is registered,
/// one "node `name` is Unimplemented(op)" entry each, comma-separated.
fn unsupported_ops(model: &InferenceModel) -> String {
    model
        .nodes()
        .iter()
        .filter_map(|node| {
            let op = node.op_as::<tract_hir::ops::unimpl::UnimplementedOp>()?;
            Some(format!("node `{}` is {}", node.name, op.name()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the model has one `[1, 3, H, W]` f32 input and detector-shaped
/// outputs; returns the input shape.
fn check_detector_io(model: &TypedModel) -> Result<[usize; 4], String> {
    let [input] = model.inputs[..] else {
        return Err(format!(
            "it has {} inputs, expected 1 image input",
            model.inputs.len()
        ));
    };
    let fact = model.outlet_fact(input).map_err(|e| e.to_string())?;
    let shape: Option<Vec<usize>> = fact.shape.as_concrete().map(|s| s.to_vec());
    let input_shape = match shape.as_deref() {
        Some(&[1, 3, h, w]) if fact.datum_type == f32::datum_type() => [1, 3, h, w],
        _ => return Err(format!("its input is {fact:?}, expected f32 [1, 3, H, W]")),
    };
    if model.outputs.is_empty() {
        return Err("it has no outputs".into());
    }
    for (index, &output) in model.outputs.iter().enumerate() {
        let fact = model.outlet_fact(output).map_err(|e| e.to_string())?;
        let shape = fact
            .shape
            .as_concrete()
            .ok_or_else(|| format!("output {index} has a symbolic shape {:?}", fact.shape))?;
        level_geometry(index, shape, (input_shape[2], input_shape[3]))
            .map_err(|e| e.to_string())?;
    }
    Ok(input_shape)
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// An error with its causes, on one line.
/// The [`scan::op::ContractError`] somewhere in `e`'s chain, alone.
/// The model's [`CONFIDENCE_METADATA_KEY`] entry, if it has one: a number in
/// (0, 1].
fn metadata_confidence(proto: &tract_onnx::pb::ModelProto) -> Result<Option<f32>, String> {
    let Some(entry) = proto
        .metadata_props
        .iter()
        .find(|entry| entry.key == CONFIDENCE_METADATA_KEY)
    else {
        return Ok(None);
    };
    match entry.value.trim().parse::<f32>() {
        Ok(confidence) if confidence > 0.0 && confidence <= 1.0 => Ok(Some(confidence)),
        _ => Err(format!(
            "metadata {CONFIDENCE_METADATA_KEY} is `{}`, not a score threshold in (0, 1]",
            entry.value
        )),
    }
}

fn contract_error(e: &anyhow::Error, model: &ModelSource) -> Option<ModelError> {
    let broken = e
        .chain()
        .find_map(|cause| cause.downcast_ref::<scan::op::ContractError>())?;
    Some(ModelError::Contract {
        model: model.clone(),
        cause: broken.to_string(),
    })
}

fn chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
