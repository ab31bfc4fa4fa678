//! The x86_64 kernels, each laid out by [`lanes`](super::lanes) and picked
//! at run time by what the CPU has: AVX-512F (16 channels per `__m512`), then
//! AVX2+FMA (8 per `__m256`). Both compute every step with the same IEEE
//! operations, so they agree bit for bit with each other and with NEON.

use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};

use super::ScanKernel;

mod avx2;
mod avx512;

/// f32s per 64-byte cache line.
const F32_PER_CACHE_LINE: usize = 16;

/// The kernels this CPU can run, fastest first.
pub(super) fn detect() -> impl Iterator<Item = &'static dyn ScanKernel> {
    [avx512::detect(), avx2::detect()].into_iter().flatten()
}

/// Hints the CPU to start loading `data` into the cache.
fn prefetch(data: &[f32]) {
    for line in data.chunks(F32_PER_CACHE_LINE) {
        // SAFETY: SSE is part of x86_64; a prefetch never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) }
    }
}
