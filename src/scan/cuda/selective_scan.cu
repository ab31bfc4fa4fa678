// The fer_edge::SelectiveScan kernel (MODEL.md, "The selective scan"),
// compiled at run time with NVRTC; it needs no header.
//
//   dt[c,t]  = softplus(delta[c,t] + delta_bias[c])   (or without softplus)
//   h[c,n,t] = exp(dt[c,t] A[c,n]) h[c,n,t-1] + dt[c,t] Bs[g,n,t] u[c,t],   h[.,.,-1] = 0
//   y[c,t]   = sum_n Cs[g,n,t] h[c,n,t] + D[c] u[c,t]
//
// Layout: the op's own row-major tensors, read in place (u, delta, y:
// [B, KD, L]; A: [KD, N]; Bs, Cs: [B, G, N, L]; D, delta_bias: [KD]).
//
// Grid: z = batch item, y = group g, x = blocks of consecutive channels of
// that group, so every thread of a block reads the same Bs and Cs values at
// each step. One thread per channel: it keeps its N states (at most
// MAX_STATE) in registers and walks the whole time axis itself, in the same
// order of operations as the CPU reference kernel.
//
// All indices fit in int: the host refuses tensors of more than INT_MAX
// elements (src/scan/cuda/launch.rs, which also sizes the grid).

#define MAX_STATE 16
#define SOFTPLUS_THRESHOLD 20.0f

extern "C" __global__ void fer_edge_selective_scan(
    const float* __restrict__ u,
    const float* __restrict__ delta,
    const float* __restrict__ a,
    const float* __restrict__ bs,
    const float* __restrict__ cs,
    const float* __restrict__ d,
    const float* __restrict__ delta_bias,
    float* __restrict__ y,
    int channels,
    int groups,
    int state,
    int len,
    int delta_softplus)
{
    const int channels_per_group = channels / groups;
    const int in_group = blockIdx.x * blockDim.x + threadIdx.x;
    if (in_group >= channels_per_group) {
        return;
    }
    const int group = blockIdx.y;
    const int batch = blockIdx.z;
    const int channel = group * channels_per_group + in_group;
    const int row = (batch * channels + channel) * len;
    const float* group_b = bs + (batch * groups + group) * state * len;
    const float* group_c = cs + (batch * groups + group) * state * len;
    const float d_c = d[channel];
    const float bias_c = delta_bias[channel];

    float a_c[MAX_STATE];
    float h[MAX_STATE];
#pragma unroll
    for (int n = 0; n < MAX_STATE; ++n) {
        a_c[n] = n < state ? a[channel * state + n] : 0.0f;
        h[n] = 0.0f;
    }

    for (int t = 0; t < len; ++t) {
        float dt = delta[row + t] + bias_c;
        if (delta_softplus && dt <= SOFTPLUS_THRESHOLD) {
            dt = log1pf(expf(dt));
        }
        const float u_t = u[row + t];
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < MAX_STATE; ++n) {
            if (n < state) {
                h[n] = expf(dt * a_c[n]) * h[n] + dt * group_b[n * len + t] * u_t;
                sum += group_c[n * len + t] * h[n];
            }
        }
        y[row + t] = sum + d_c * u_t;
    }
}
