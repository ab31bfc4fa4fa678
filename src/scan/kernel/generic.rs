//! The portable reference kernel: the maths written as plain scalar loops with
//! std's `exp`, one channel at a time, in the block's traversal order. It runs everywhere and is the yardstick
//! the SIMD kernels are tested against.

use smallvec::{smallvec, SmallVec};

use super::{ChannelBlock, ScanKernel, INLINE_STATES};

/// Above this, softplus(x) is x to within f32 rounding; PyTorch's threshold.
const SOFTPLUS_THRESHOLD: f32 = 20.0;

/// The scalar kernel; stateless, so one static instance serves every call.
pub(super) struct Reference;

pub(super) static REFERENCE: Reference = Reference;

impl ScanKernel for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn vector_channels(&self) -> usize {
        1
    }

    fn scan_block(&self, block: &ChannelBlock, y: &mut [f32]) {
        let (len, state) = (block.len, block.state);
        let mut h: SmallVec<[f32; INLINE_STATES]> = smallvec![0.0; state];
        for (channel, y_row) in y.chunks_exact_mut(len).enumerate() {
            let u_row = &block.u[channel * len..][..len];
            let a_row = &block.a[channel * state..][..state];
            let (d, delta_bias) = (block.d[channel], block.delta_bias[channel]);
            h.fill(0.0);
            for t in 0..len {
                let position = block.position(t);
                let raw_dt = block.delta(channel, t) + delta_bias;
                let dt = if block.delta_softplus {
                    softplus(raw_dt)
                } else {
                    raw_dt
                };
                let u = u_row[position];
                let mut sum = 0.0;
                for (n, (h_n, &a_n)) in h.iter_mut().zip(a_row).enumerate() {
                    *h_n = (dt * a_n).exp() * *h_n + dt * block.b[n * len + t] * u;
                    sum += block.c[n * len + t] * *h_n;
                }
                let y_t = sum + d * u;
                if block.traversal.is_some() {
                    y_row[position] += y_t;
                } else {
                    y_row[position] = y_t;
                }
            }
        }
    }
}

/// ln(1 + e^x), returning x itself above [`SOFTPLUS_THRESHOLD`] where e^x
/// would overflow.
fn softplus(x: f32) -> f32 {
    if x > SOFTPLUS_THRESHOLD {
        x
    } else {
        x.exp().ln_1p()
    }
}
