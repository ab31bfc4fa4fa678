// The selective-scan kernels of fer_edge::SelectiveScan (MODEL.md, "The
// selective scan") and fer_edge::SelectiveScan2D (docs/model-contract.md),
// compiled at run time with NVRTC as one module; they need no header.
//
//   dt[c,t]  = softplus(delta[c,t] + delta_bias[c])   (or without softplus)
//   h[c,n,t] = exp(dt[c,t] A[c,n]) h[c,n,t-1] + dt[c,t] Bs[g,n,t] u[c,t],   h[.,.,-1] = 0
//   y[c,t]   = sum_n Cs[g,n,t] h[c,n,t] + D[c] u[c,t]
//
// One thread per channel (and, in 2-D, per direction): it keeps its N states
// (at most MAX_STATE) in registers and walks the whole sequence itself, in
// the same order of operations as the CPU reference kernel
// (src/scan/kernel/generic.rs). Both ops' kernels share that walk,
// scan_channel.
//
// All indices fit in int: the host refuses tensors of more than INT_MAX
// elements (src/scan/cuda/launch.rs, which also sizes the grids).

#define MAX_STATE 16
#define SOFTPLUS_THRESHOLD 20.0f

// The position in an H x W grid (flat index h*W + w) that step `step` of
// direction `direction` visits, with the formulas of cross_scan::traversal
// (src/scan/kernel/cross_scan.rs): k0 row-major; k1 column-major; k4 the
// diagonal (h, (h + w) mod W) read column by column; k5 the anti-diagonal
// (h, (w - h) mod W) likewise; k2, k3, k6 and k7 the reverses of k0, k1, k4
// and k5. Direction 0 of a 1 x L grid is the identity: version 1's walk.
static __device__ __forceinline__ int step_position(int direction, int step, int height, int width)
{
    const int len = height * width;
    const int forward = (direction & 2) ? len - 1 - step : step;
    // 0 row-major, 1 column-major, 2 diagonal, 3 anti-diagonal
    const int walk = (direction & 1) | ((direction & 4) >> 1);
    if (walk == 0) {
        return forward;
    }
    const int h = forward % height;
    const int w = forward / height;
    int column = w;
    if (walk == 2) {
        // (h + w) mod W; w + h % W <= W + H - 2 < H*W: no overflow
        column = w + h % width;
        if (column >= width) {
            column -= width;
        }
    } else if (walk == 3) {
        // (w - h) mod W
        column = w - h % width;
        if (column < 0) {
            column += width;
        }
    }
    return h * width + column;
}

// Scans one channel over an H x W grid walked in `direction`: step t reads
// u, delta and the N rows of Bs and Cs at the position step_position gives,
// and writes its output at that position of y.
static __device__ __forceinline__ void scan_channel(
    const float* u_row,
    const float* delta_row,
    const float* a_row,
    const float* b_rows,
    const float* c_rows,
    float d_c,
    float bias_c,
    float* y_row,
    int state,
    int direction,
    int height,
    int width,
    int delta_softplus)
{
    const int len = height * width;
    float a_c[MAX_STATE];
    float h[MAX_STATE];
#pragma unroll
    for (int n = 0; n < MAX_STATE; ++n) {
        a_c[n] = n < state ? a_row[n] : 0.0f;
        h[n] = 0.0f;
    }

    for (int t = 0; t < len; ++t) {
        const int p = step_position(direction, t, height, width);
        float dt = delta_row[p] + bias_c;
        if (delta_softplus && dt <= SOFTPLUS_THRESHOLD) {
            dt = log1pf(expf(dt));
        }
        const float u_t = u_row[p];
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < MAX_STATE; ++n) {
            if (n < state) {
                h[n] = expf(dt * a_c[n]) * h[n] + dt * b_rows[n * len + p] * u_t;
                sum += c_rows[n * len + p] * h[n];
            }
        }
        y_row[p] = sum + d_c * u_t;
    }
}

// SelectiveScan. Layout: the op's own row-major tensors, read in place (u,
// delta, y: [B, KD, L]; A: [KD, N]; Bs, Cs: [B, G, N, L]; D, delta_bias:
// [KD]).
//
// Grid: z = batch item, y = group g, x = blocks of consecutive channels of
// that group, so every thread of a block reads the same Bs and Cs values at
// each step.
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
    const unsigned in_group = blockIdx.x * blockDim.x + threadIdx.x;
    if (in_group >= (unsigned)channels_per_group) {
        return;
    }
    const int group = blockIdx.y;
    const int batch = blockIdx.z;
    const int channel = group * channels_per_group + (int)in_group;
    const int row = (batch * channels + channel) * len;
    const int group_rows = (batch * groups + group) * state * len;
    scan_channel(u + row, delta + row, a + channel * state, bs + group_rows, cs + group_rows,
        d[channel], delta_bias[channel], y + row, state, 0, 1, len, delta_softplus);
}

// SelectiveScan2D, first pass: every direction k of every channel c, scanned
// into its own row partial[b, k, c, .] (partial has delta's shape), each
// output on the pixel its step visits. Layout: the op's row-major tensors,
// read in place (u: [B, Di, H, W]; delta: [B, K, Di, H, W]; A: [K*Di, N];
// Bs, Cs: [B, K, N, H, W]; D, delta_bias: [K*Di]).
//
// Grid: z = batch item, y = direction k, x = blocks of consecutive channels,
// so every thread of a block reads the same Bs and Cs values at each step.
extern "C" __global__ void fer_edge_selective_scan_2d(
    const float* __restrict__ u,
    const float* __restrict__ delta,
    const float* __restrict__ a,
    const float* __restrict__ bs,
    const float* __restrict__ cs,
    const float* __restrict__ d,
    const float* __restrict__ delta_bias,
    float* __restrict__ partial,
    int channels,
    int directions,
    int state,
    int height,
    int width,
    int delta_softplus)
{
    const unsigned thread = blockIdx.x * blockDim.x + threadIdx.x;
    if (thread >= (unsigned)channels) {
        return;
    }
    const int channel = (int)thread;
    const int direction = blockIdx.y;
    const int batch = blockIdx.z;
    const int len = height * width;
    // channel k*Di + c of A, D and delta_bias
    const int param = direction * channels + channel;
    // row (b, k, c) of delta and partial
    const int row = ((batch * directions + direction) * channels + channel) * len;
    const int direction_rows = (batch * directions + direction) * state * len;
    scan_channel(u + (batch * channels + channel) * len, delta + row, a + param * state,
        bs + direction_rows, cs + direction_rows, d[param], delta_bias[param], partial + row,
        state, direction, height, width, delta_softplus);
}

// SelectiveScan2D, second pass: y[b, c, p] = sum over k of partial[b, k, c,
// p], from 0 and in the order k = 0, 1, ..., as the CPU kernel adds the
// directions into y.
//
// Grid: z = batch item, x = blocks of one item's Di*H*W outputs.
extern "C" __global__ void fer_edge_merge_directions(
    const float* __restrict__ partial,
    float* __restrict__ y,
    int directions,
    int item_len)
{
    const unsigned thread = blockIdx.x * blockDim.x + threadIdx.x;
    if (thread >= (unsigned)item_len) {
        return;
    }
    const int at = (int)thread;
    const int batch = blockIdx.z;
    float sum = 0.0f;
    for (int k = 0; k < directions; ++k) {
        sum += partial[(batch * directions + k) * item_len + at];
    }
    y[batch * item_len + at] = sum;
}
