//! fer-edge: on-device facial-expression detection with FER-YOLO-Mamba.
//!
//! Data flows through one module per stage:
//! [`preprocess`] -> [`infer`] -> [`decode`] -> [`face`] results -> [`track`], tied
//! together by [`detector`]. The model's custom selective-scan op, with its
//! per-architecture kernels, lives in [`scan`]; the direct 3x3 convolution
//! that stands in for some of tract's, in [`conv`].

pub mod annotate;
pub mod capture;
pub mod cli;
pub mod config;
pub mod conv;
pub mod dataset;
pub mod decode;
pub mod detector;
pub mod device;
pub mod evaluate;
pub mod face;
pub mod infer;
pub mod preprocess;
pub mod preview;
pub mod scan;
pub mod service;
pub mod signal;
pub mod track;

/// The wall clock as Unix seconds: the time base of events, the status file
/// and outages.
pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
