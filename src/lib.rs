//! fer-edge: on-device facial-expression detection with FER-YOLO-Mamba.
//!
//! Data flows through one module per stage:
//! [`preprocess`] -> [`infer`] -> [`decode`] -> [`face`] results -> [`track`], tied
//! together by [`detector`]. The model's custom selective-scan op, with its
//! per-architecture kernels, lives in [`scan`].

pub mod annotate;
pub mod cli;
pub mod decode;
pub mod detector;
pub mod face;
pub mod infer;
pub mod preprocess;
pub mod scan;
pub mod track;
