//! The selective scan: FER-YOLO-Mamba's one op that ONNX lacks.
//!
//! [`kernel`] holds the numerical kernels (portable reference, x86_64 AVX2+FMA,
//! aarch64 NEON) behind one interface.

pub mod kernel;
