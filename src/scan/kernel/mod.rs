//! Selective-scan kernels (placeholder, being written).
