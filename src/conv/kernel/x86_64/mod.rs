//! The x86_64 kernels, one module per instruction set as the scan's are:
//! AVX-512F (16 lanes, both tilings), then AVX2+FMA (8 lanes, output
//! channels only, with register tiles of its own).

mod avx2;
mod avx512;

use super::Kernel;

/// Every kernel this CPU runs, the fastest first.
pub(super) fn available() -> impl Iterator<Item = Kernel> {
    [avx512::detect(), avx2::detect()].into_iter().flatten()
}
