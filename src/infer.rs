//! Inference: loading an exported FER-YOLO-Mamba ONNX file into tract, with
//! the `fer_edge::SelectiveScan` op registered, and running it.

use crate::decode::level_geometry;
use crate::device::Device;
use crate::scan;
use std::path::{Path, PathBuf};
use tract_linalg::multithread::{current_tract_executor, set_default_executor, Executor};
use tract_onnx::prelude::*;

/// A problem loading or running a model, naming the file and the cause.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {path} is not a valid ONNX model (corrupt or truncated?): {cause}")]
    Parse { path: PathBuf, cause: String },
    #[error("model file {path} uses operators fer-edge does not implement: {ops}")]
    UnsupportedOps { path: PathBuf, ops: String },
    #[error("model file {path} cannot be prepared for inference: {cause}")]
    Prepare { path: PathBuf, cause: String },
    #[error("model file {path} is not a FER-YOLO-Mamba detector: {cause}")]
    NotADetector { path: PathBuf, cause: String },
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

/// An optimised, runnable detector network.
#[derive(Debug)]
pub struct Model {
    plan: Arc<TypedRunnableModel>,
    input_shape: [usize; 4],
    path: PathBuf,
}

impl Model {
    /// Loads, checks and optimises the model in `path` for the CPU.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        Self::load_on(path, Device::Cpu)
    }

    /// Loads and checks the model in `path` and prepares it for `device`.
    pub fn load_on(path: &Path, device: Device) -> Result<Model, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
            path: path.into(),
            source,
        })?;
        let path_buf = path.to_path_buf();
        let parse = |e: anyhow::Error| ModelError::Parse {
            path: path_buf.clone(),
            cause: chain(&e),
        };
        let proto = onnx()
            .proto_model_for_read(&mut &bytes[..])
            .map_err(parse)?;
        let inference = onnx().model_for_proto_model(&proto).map_err(parse)?;
        let unsupported = unsupported_ops(&inference);
        if !unsupported.is_empty() {
            return Err(ModelError::UnsupportedOps {
                path: path.into(),
                ops: unsupported,
            });
        }
        let prepare = |e: anyhow::Error| ModelError::Prepare {
            path: path.into(),
            cause: chain(&e),
        };
        let typed = inference.into_typed().map_err(prepare)?;
        let input_shape = check_detector_io(&typed).map_err(|cause| ModelError::NotADetector {
            path: path.into(),
            cause,
        })?;
        let plan = device.prepare(typed).map_err(prepare)?;
        Ok(Model {
            plan,
            input_shape,
            path: path.into(),
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

    /// The file this model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs the network on one `[1, 3, H, W]` input; returns its raw output maps.
    pub fn run(&self, input: Tensor) -> Result<Vec<Tensor>, ModelError> {
        if input.shape() != self.input_shape {
            return Err(ModelError::InputShape {
                got: input.shape().to_vec(),
                expected: self.input_shape.to_vec(),
            });
        }
        let run = || self.plan.run(tvec!(input.into()));
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

/// An error with its causes, on one line.
fn chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
