//! The selective scans: FER-YOLO-Mamba's ops that ONNX lacks.
//!
//! [`kernel`] holds the numerical kernels (portable reference, x86_64
//! AVX-512F and AVX2+FMA, aarch64 NEON) behind one interface, with the 2-D traversal of
//! SS2D's directions in [`kernel::cross_scan`]; [`op`] makes them tract ops for
//! the ONNX nodes `fer_edge::SelectiveScan` (contract version 1) and
//! `fer_edge::SelectiveScan2D` (version 2, docs/model-contract.md); `cuda`
//! runs both on an NVIDIA GPU.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod kernel;
pub mod op;
