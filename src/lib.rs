//! fer-edge: on-device facial-expression detection with FER-YOLO-Mamba.
//!
//! Data flows through one module per stage:
//! [`preprocess`] -> [`infer`] -> [`decode`], with the model's custom
//! selective-scan op living in [`scan`].

pub mod scan;
