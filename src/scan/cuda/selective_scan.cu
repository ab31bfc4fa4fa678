// The selective-scan kernels of fer_edge::SelectiveScan (MODEL.md, "The
// selective scan") and fer_edge::SelectiveScan2D (docs/model-contract.md),
// compiled at run time with NVRTC as one module; they need no header.
//
//   dt[c,t]  = softplus(delta[c,t] + delta_bias[c])   (or without softplus)
//   (version 3: delta[c,t] = sum_r dt_weight[c,r] dt_low[r,t], fused
//    multiply-adds from 0 in r order, as the CPU kernels form it)
//   h[c,n,t] = exp(dt[c,t] A[c,n]) h[c,n,t-1] + dt[c,t] Bs[g,n,t] u[c,t],   h[.,.,-1] = 0
//   y[c,t]   = sum_n Cs[g,n,t] h[c,n,t] + D[c] u[c,t]
//
// One thread per channel (and, in 2-D, per direction): it keeps its N states
// (at most MAX_STATE) in registers and walks the whole sequence itself, in
// the same order of operations as the CPU reference kernel
// (src/scan/kernel/generic.rs). All the kernels share that walk,
// scan_channel, which reads delta through DeltaRow or DeltaLowRank.
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

// A channel's delta at position p, given (versions 1 and 2).
struct DeltaRow {
    const float* row;

    __device__ __forceinline__ float at(int p) const { return row[p]; }
};

// A channel's delta at position p, projected from R low-rank rows of L
// (version 3): fused multiply-adds from 0, r in order.
struct DeltaLowRank {
    const float* weight;  // the channel's R weights
    const float* low;     // R rows of L
    int rank;
    int len;

    __device__ __forceinline__ float at(int p) const
    {
        float delta = 0.0f;
        for (int r = 0; r < rank; ++r) {
            delta = fmaf(weight[r], low[r * len + p], delta);
        }
        return delta;
    }
};

// Scans one channel over an H x W grid walked in `direction`: step t reads
// u, delta and the N rows of Bs and Cs at the position step_position gives,
// and writes its output at that position of y.
template <typename Delta>
static __device__ __forceinline__ void scan_channel(
    const float* u_row,
    Delta delta,
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
        float dt = delta.at(p) + bias_c;
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
    scan_channel(u + row, DeltaRow{delta + row}, a + channel * state, bs + group_rows,
        cs + group_rows, d[channel], delta_bias[channel], y + row, state, 0, 1, len,
        delta_softplus);
}

// One thread of a 2-D scan's first pass: channel c of direction k of batch
// item b. Grid: z = batch item, y = direction k, x = blocks of consecutive
// channels, so every thread of a block reads the same Bs and Cs values at
// each step.
struct Scan2dThread {
    int channel;
    int direction;
    int batch;

    // The start of this thread's row (b, k, c) in a [B, K, Di, H, W] tensor.
    __device__ __forceinline__ int row(int channels, int directions, int len) const
    {
        return ((batch * directions + direction) * channels + channel) * len;
    }
};

// This thread's place in the grid; false for the threads past the last
// channel.
static __device__ __forceinline__ bool scan_2d_thread(int channels, Scan2dThread* thread)
{
    const unsigned x = blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= (unsigned)channels) {
        return false;
    }
    *thread = Scan2dThread{(int)x, (int)blockIdx.y, (int)blockIdx.z};
    return true;
}

// Scans `thread`'s direction of its channel into its row partial[b, k, c, .]
// (partial has a version 2 delta's shape), each output on the pixel its
// step visits. Layout: the op's row-major tensors, read in place (u: [B, Di,
// H, W]; A: [K*Di, N]; Bs, Cs: [B, K, N, H, W]; D, delta_bias: [K*Di]).
template <typename Delta>
static __device__ __forceinline__ void scan_2d_channel(
    Scan2dThread thread,
    const float* u,
    Delta delta,
    const float* a,
    const float* bs,
    const float* cs,
    const float* d,
    const float* delta_bias,
    float* partial,
    int channels,
    int directions,
    int state,
    int height,
    int width,
    int delta_softplus)
{
    const int len = height * width;
    // channel k*Di + c of A, D and delta_bias
    const int param = thread.direction * channels + thread.channel;
    const int row = thread.row(channels, directions, len);
    const int direction_rows = (thread.batch * directions + thread.direction) * state * len;
    scan_channel(u + (thread.batch * channels + thread.channel) * len, delta, a + param * state,
        bs + direction_rows, cs + direction_rows, d[param], delta_bias[param], partial + row,
        state, thread.direction, height, width, delta_softplus);
}

// SelectiveScan2D of version 2, first pass: every direction k of every
// channel c, scanned into its own row of partial (scan_2d_channel), delta
// [B, K, Di, H, W] read in place.
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
    Scan2dThread thread;
    if (!scan_2d_thread(channels, &thread)) {
        return;
    }
    const int row = thread.row(channels, directions, height * width);
    scan_2d_channel(thread, u, DeltaRow{delta + row}, a, bs, cs, d, delta_bias, partial,
        channels, directions, state, height, width, delta_softplus);
}

// SelectiveScan2D of version 3, first pass: as version 2's, with each
// channel's delta projected from dt_low [B, K, R, H, W] by its row of
// dt_weight [K*Di, R].
extern "C" __global__ void fer_edge_selective_scan_2d_low_rank(
    const float* __restrict__ u,
    const float* __restrict__ dt_low,
    const float* __restrict__ dt_weight,
    const float* __restrict__ a,
    const float* __restrict__ bs,
    const float* __restrict__ cs,
    const float* __restrict__ d,
    const float* __restrict__ delta_bias,
    float* __restrict__ partial,
    int channels,
    int directions,
    int state,
    int rank,
    int height,
    int width,
    int delta_softplus)
{
    Scan2dThread thread;
    if (!scan_2d_thread(channels, &thread)) {
        return;
    }
    const int len = height * width;
    const DeltaLowRank delta{
        dt_weight + (thread.direction * channels + thread.channel) * rank,
        dt_low + (thread.batch * directions + thread.direction) * rank * len,
        rank,
        len,
    };
    scan_2d_channel(thread, u, delta, a, bs, cs, d, delta_bias, partial, channels, directions,
        state, height, width, delta_softplus);
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
