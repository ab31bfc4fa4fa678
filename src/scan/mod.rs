//! The selective scan: FER-YOLO-Mamba's one op that ONNX lacks.
//!
//! [`kernel`] holds the numerical kernels (portable reference, x86_64
//! AVX2+FMA, aarch64 NEON) behind one interface; [`op`] makes them a tract
//! op for the ONNX node `fer_edge::SelectiveScan`.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod kernel;
pub mod op;
