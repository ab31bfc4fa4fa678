// Native CPU selective scan of FER-YOLO-Mamba (MODEL.md, "The selective scan"):
// forward and backward of exactly the function of scan.py's selective_scan_ref, given
// dt = softplus(delta + delta_bias) (or delta + delta_bias) computed by the caller.
//
//     h[c,n,t] = exp(dt[c,t] A[c,n]) h[c,n,t-1] + dt[c,t] u[c,t] Bs[g(c),n,t],  h[.,.,-1] = 0
//     y[c,t]   = sum_n Cs[g(c),n,t] h[c,n,t] + D[c] u[c,t]
//
// Layout of the work
// -------------------
// SIMD lanes run over W channels of one group (they share Bs and Cs, so B[t,n] and C[t,n]
// are scalar broadcasts), the state h[n] of a block of W channels is N vectors in a small
// local array (L1; N = 16 is a compile-time specialisation), the time loop is inside. The
// read-out sum_n C h is then a vertical sum: no horizontal reduction in the time loop.
// One task is (batch b, group g, slice s of the group's channel blocks); tasks run in
// parallel with at::parallel_for (torch's OpenMP pool, so torch.set_num_threads applies).
//
// Backward, per block of W channels: recompute the forward states of all L steps into a
// task-local buffer ((L+1)*N vectors: 0.4 / 0.8 MB at L = 784, N = 16, W = 8 / 16), then
// run the reverse-time recurrence on g = dL/dh:
//     g[t]       = Cs[t] gy[t] + exp(dt[t+1] A) g[t+1]
//     p[t]       = g[t] exp(dt[t] A) h[t-1]                  (= dL/d(dt A))
//     dA        += p dt,   d(dt) = sum_n p A + u sum_n g Bs,   du = dt sum_n g Bs + D gy
//     dBs[t,n]  += sum_{c in block} g dt u,   dCs[t,n] += sum_{c in block} gy h
// dBs / dCs contributions are accumulated as W-lane vectors in task-local buffers and
// reduced across lanes once per task; tasks never share an output element (a group can be
// split into S slices only through a separate partial buffer per slice, summed by the
// caller), dA / dD / d(delta_bias) are written per (b, c) and summed over b by the caller:
// no races, no atomics. Nothing but the inputs (and dt) is kept from the forward pass.
//
// Exponentials: a Cephes-style exp in plain vector arithmetic (GCC/Clang vector
// extensions, so it vectorises at SSE2 without -march=native); relative error ~2 ulp,
// arguments clamped to [-87.3, 88] (the scan only needs dt*A <= 0). The same source is
// compiled for SSE2 (W = 4), AVX2+FMA (W = 8) and AVX-512F (W = 16); the widest the CPU
// supports is picked at run time (set_max_isa lowers it, for tests); float32 kernels run
// with subnormals flushed to zero. float64 (for gradcheck) uses std::exp lane by lane.
//
// Memory: storing every state of a call for the backward pass would take B*KD*L*N floats
// (1 GiB at B = 16, KD = 1024, L = 1024, N = 16, per scan call), so nothing is stored:
// the backward recomputes the states of one block of W channels at a time into a
// per-thread buffer of (L+1)*N*W floats (0.5 / 1 MiB at L = 1024, W = 8 / 16).

#include <ATen/ATen.h>
#include <torch/python.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#define SS_INLINE inline __attribute__((always_inline))

namespace {

constexpr int64_t kMaxN = 64;  // states per channel supported by the generic-N path

template <typename T, int W>
struct VecT {
  typedef T type __attribute__((vector_size(sizeof(T) * W)));
};

// Heap buffer of vectors aligned to 64 bytes. (std::vector<V> is not enough: compiled for
// the default target, a 32/64-byte vector type only gets 16-byte alignment, and the
// AVX2 / AVX-512 entries use aligned loads on it.)
template <typename V>
class VecBuf {
 public:
  explicit VecBuf(int64_t n) {
    const size_t bytes = ((std::max<int64_t>(n, 1) * sizeof(V) + 63) / 64) * 64;
    p_ = static_cast<V*>(std::aligned_alloc(64, bytes));
    TORCH_CHECK(p_ != nullptr, "native selective scan: out of memory");
  }
  ~VecBuf() { std::free(p_); }
  VecBuf(const VecBuf&) = delete;
  VecBuf& operator=(const VecBuf&) = delete;
  V* data() { return p_; }
  V& operator[](int64_t i) { return p_[i]; }

 private:
  V* p_;
};
template <int W>
struct IVecT {
  typedef int32_t type __attribute__((vector_size(sizeof(int32_t) * W)));
};

template <typename V>
SS_INLINE V vzero() {
  return V{};
}

template <typename V, typename T>
SS_INLINE V vset(T s) {
  return V{} + s;
}

template <typename V, int W>
SS_INLINE auto vhsum(V v) {
  auto s = v[0];
  for (int j = 1; j < W; ++j) s += v[j];
  return s;
}

// exp for float lanes: Cephes expf (range reduction by ln 2, degree-6 polynomial).
template <int W>
SS_INLINE typename VecT<float, W>::type vexp(typename VecT<float, W>::type x) {
  typedef typename VecT<float, W>::type V;
  typedef typename IVecT<W>::type VI;
  const V hi = vset<V>(88.0f), lo = vset<V>(-87.33654475f);
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: (v + magic) - magic rounds to nearest
  V k = (x * 1.44269504088896341f + magic) - magic;
  V r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  V p = vset<V>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  V y = p * (r * r) + r + 1.0f;
  VI ki = __builtin_convertvector(k, VI);
  VI bits = (ki + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(V));
  return y * scale;
}

// expm1 for float lanes, accurate near 0 (used for softplus' = -expm1(-dt)).
template <int W>
SS_INLINE typename VecT<float, W>::type vexpm1(typename VecT<float, W>::type x) {
  typedef typename VecT<float, W>::type V;
  // |x| < 0.5: Taylor series to x^8 (truncation < 2e-8 relative); else exp(x) - 1.
  V p = vset<V>(1.0f / 40320.0f);
  p = p * x + 1.0f / 5040.0f;
  p = p * x + 1.0f / 720.0f;
  p = p * x + 1.0f / 120.0f;
  p = p * x + 1.0f / 24.0f;
  p = p * x + 1.0f / 6.0f;
  p = p * x + 0.5f;
  p = p * (x * x) + x;
  V e = vexp<W>(x) - 1.0f;
  V ax = x < 0.0f ? -x : x;
  return ax < 0.5f ? p : e;
}

// float64 lanes: libm, lane by lane (tests and gradcheck only).
template <int W>
SS_INLINE typename VecT<double, W>::type vexp(typename VecT<double, W>::type x) {
  for (int j = 0; j < W; ++j) x[j] = std::exp(x[j]);
  return x;
}
template <int W>
SS_INLINE typename VecT<double, W>::type vexpm1(typename VecT<double, W>::type x) {
  for (int j = 0; j < W; ++j) x[j] = std::expm1(x[j]);
  return x;
}

template <typename T>
struct Params {
  int64_t B, KD, L, N, G, Dg, S;
  const T* u;
  const T* dt;
  const T* A;
  const T* Bs;
  const T* Cs;
  const T* D;  // may be null
  // forward
  T* y;
  // backward
  const T* gy;
  bool softplus;
  T* gu;      // [B, KD, L]
  T* gdelta;  // [B, KD, L]
  T* gA;      // [B, KD, N]   (summed over B by the caller)
  T* gB;      // [S, B, G, N, L] (summed over S by the caller)
  T* gC;      // [S, B, G, N, L]
  T* gD;      // [B, KD]
  T* gbias;   // [B, KD]
};

struct Task {
  int64_t b, g, s, blk0, blk1;
};

SS_INLINE Task task_of(int64_t task, int64_t G, int64_t S, int64_t nblk) {
  Task k;
  k.s = task % S;
  k.g = (task / S) % G;
  k.b = task / (S * G);
  k.blk0 = k.s * nblk / S;
  k.blk1 = (k.s + 1) * nblk / S;
  return k;
}

// [N, L] -> [L, N]
template <typename T>
SS_INLINE void transpose_nl(const T* src, T* dst, int64_t N, int64_t L) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t t = 0; t < L; ++t) dst[t * N + n] = src[n * L + t];
}

// rows [nv][L] (stride L) -> lanes [L] of W (lanes >= nv zero)
template <typename T, int W>
SS_INLINE void gather_rows(const T* rows, int64_t nv, int64_t L,
                           typename VecT<T, W>::type* out) {
  typedef typename VecT<T, W>::type V;
  for (int64_t t = 0; t < L; ++t) out[t] = vzero<V>();
  for (int64_t j = 0; j < nv; ++j) {
    const T* r = rows + j * L;
    for (int64_t t = 0; t < L; ++t) out[t][j] = r[t];
  }
}

template <typename T, int W>
SS_INLINE void scatter_rows(const typename VecT<T, W>::type* in, int64_t nv, int64_t L,
                            T* rows) {
  for (int64_t j = 0; j < nv; ++j) {
    T* r = rows + j * L;
    for (int64_t t = 0; t < L; ++t) r[t] = in[t][j];
  }
}

// Bs and Cs of batch item and group `bg`, transposed to [L, N], unless
// they are the ones already in bt / ct.
template <typename T>
SS_INLINE void load_group_rows(const Params<T>& p, int64_t bg, int64_t N, int64_t* cur_bg,
                               T* bt, T* ct) {
  if (bg == *cur_bg) return;
  transpose_nl(p.Bs + bg * N * p.L, bt, N, p.L);
  transpose_nl(p.Cs + bg * N * p.L, ct, N, p.L);
  *cur_bg = bg;
}

// A and D of channels c0 .. c0 + nv as lanes, and zero initial states.
template <typename T, typename V>
SS_INLINE void load_lane_params(const Params<T>& p, int64_t c0, int64_t nv, int64_t N, V* av,
                                V* h, V* dv) {
  *dv = vzero<V>();
  for (int64_t n = 0; n < N; ++n) {
    av[n] = vzero<V>();
    h[n] = vzero<V>();
    for (int64_t j = 0; j < nv; ++j) av[n][j] = p.A[(c0 + j) * N + n];
  }
  if (p.D)
    for (int64_t j = 0; j < nv; ++j) (*dv)[j] = p.D[c0 + j];
}

template <typename T, int W, int NT>
SS_INLINE void forward_tasks(const Params<T>& p, int64_t task0, int64_t task1) {
  typedef typename VecT<T, W>::type V;
  const int64_t L = p.L, G = p.G, Dg = p.Dg, KD = p.KD;
  const int64_t N = NT > 0 ? NT : p.N;
  const int64_t nblk = (Dg + W - 1) / W;
  std::vector<T> bt(L * N), ct(L * N);
  VecBuf<V> dtb(L), ub(L), yb(L);
  int64_t cur_bg = -1;
  for (int64_t task = task0; task < task1; ++task) {
    const Task k = task_of(task, G, p.S, nblk);
    const int64_t bg = k.b * G + k.g;
    load_group_rows(p, bg, N, &cur_bg, bt.data(), ct.data());
    for (int64_t blk = k.blk0; blk < k.blk1; ++blk) {
      const int64_t c0 = k.g * Dg + blk * W;
      const int64_t nv = std::min<int64_t>(W, Dg - blk * W);
      const int64_t row0 = (k.b * KD + c0) * L;
      gather_rows<T, W>(p.dt + row0, nv, L, dtb.data());
      gather_rows<T, W>(p.u + row0, nv, L, ub.data());
      V av[NT > 0 ? NT : kMaxN], h[NT > 0 ? NT : kMaxN];
      V dv;
      load_lane_params<T, V>(p, c0, nv, N, av, h, &dv);
      for (int64_t t = 0; t < L; ++t) {
        const V d = dtb[t], uu = ub[t], x = d * uu;
        const T* bq = bt.data() + t * N;
        const T* cq = ct.data() + t * N;
        V acc = dv * uu;
        for (int64_t n = 0; n < N; ++n) {
          const V a = vexp<W>(d * av[n]);
          const V hn = a * h[n] + x * bq[n];
          h[n] = hn;
          acc += hn * cq[n];
        }
        yb[t] = acc;
      }
      scatter_rows<T, W>(yb.data(), nv, L, p.y + row0);
    }
  }
}

template <typename T, int W, int NT>
SS_INLINE void backward_tasks(const Params<T>& p, int64_t task0, int64_t task1) {
  typedef typename VecT<T, W>::type V;
  const int64_t L = p.L, G = p.G, Dg = p.Dg, KD = p.KD, B = p.B;
  const int64_t N = NT > 0 ? NT : p.N;
  const int64_t nblk = (Dg + W - 1) / W;
  std::vector<T> bt(L * N), ct(L * N);
  VecBuf<V> dtb(L), ub(L), gyb(L), gub(L), gdb(L);
  VecBuf<V> hs((L + 1) * N);  // hs[(t + 1) * N + n] = h[t]; row 0 = h[-1] = 0
  VecBuf<V> dbp(L * N), dcp(L * N);
  int64_t cur_bg = -1;
  for (int64_t task = task0; task < task1; ++task) {
    const Task k = task_of(task, G, p.S, nblk);
    const int64_t bg = k.b * G + k.g;
    load_group_rows(p, bg, N, &cur_bg, bt.data(), ct.data());
    for (int64_t i = 0; i < L * N; ++i) {
      dbp[i] = vzero<V>();
      dcp[i] = vzero<V>();
    }
    for (int64_t n = 0; n < N; ++n) hs[n] = vzero<V>();
    for (int64_t blk = k.blk0; blk < k.blk1; ++blk) {
      const int64_t c0 = k.g * Dg + blk * W;
      const int64_t nv = std::min<int64_t>(W, Dg - blk * W);
      const int64_t row0 = (k.b * KD + c0) * L;
      gather_rows<T, W>(p.dt + row0, nv, L, dtb.data());
      gather_rows<T, W>(p.u + row0, nv, L, ub.data());
      gather_rows<T, W>(p.gy + row0, nv, L, gyb.data());
      V av[NT > 0 ? NT : kMaxN], h[NT > 0 ? NT : kMaxN];
      V dv;
      load_lane_params<T, V>(p, c0, nv, N, av, h, &dv);

      // 1. recompute the states; dCs needs only gy and h, so it is done here
      for (int64_t t = 0; t < L; ++t) {
        const V d = dtb[t], x = d * ub[t], g = gyb[t];
        const T* bq = bt.data() + t * N;
        V* hrow = hs.data() + (t + 1) * N;
        V* dc = dcp.data() + t * N;
        for (int64_t n = 0; n < N; ++n) {
          const V a = vexp<W>(d * av[n]);
          const V hn = a * h[n] + x * bq[n];
          h[n] = hn;
          hrow[n] = hn;
          dc[n] += g * hn;
        }
      }

      // 2. reverse-time recurrence (h[] now holds the carry exp(dt[t+1] A) g[t+1])
      V ga[NT > 0 ? NT : kMaxN];
      for (int64_t n = 0; n < N; ++n) {
        h[n] = vzero<V>();
        ga[n] = vzero<V>();
      }
      V gdacc = vzero<V>(), gbacc = vzero<V>();
      for (int64_t t = L - 1; t >= 0; --t) {
        const V d = dtb[t], uu = ub[t], x = d * uu, g = gyb[t];
        const T* bq = bt.data() + t * N;
        const T* cq = ct.data() + t * N;
        const V* hprev = hs.data() + t * N;
        V* db = dbp.data() + t * N;
        V ddt = vzero<V>(), sb = vzero<V>();
        for (int64_t n = 0; n < N; ++n) {
          const V a = vexp<W>(d * av[n]);
          const V gh = g * cq[n] + h[n];
          const V pn = gh * (a * hprev[n]);
          ga[n] += pn * d;
          ddt += pn * av[n];
          sb += gh * bq[n];
          db[n] += gh * x;
          h[n] = a * gh;
        }
        ddt += sb * uu;
        gub[t] = d * sb + dv * g;
        if (p.softplus) ddt *= -vexpm1<W>(-d);  // softplus'(z) = sigmoid(z) = 1 - exp(-dt)
        gdb[t] = ddt;
        gdacc += g * uu;
        gbacc += ddt;
      }
      scatter_rows<T, W>(gub.data(), nv, L, p.gu + row0);
      scatter_rows<T, W>(gdb.data(), nv, L, p.gdelta + row0);
      for (int64_t j = 0; j < nv; ++j) {
        const int64_t c = c0 + j;
        for (int64_t n = 0; n < N; ++n) p.gA[(k.b * KD + c) * N + n] = ga[n][j];
        p.gD[k.b * KD + c] = gdacc[j];
        p.gbias[k.b * KD + c] = gbacc[j];
      }
    }
    // lane reduction of this task's dBs / dCs contributions: [L][N] -> [N, L]
    T* gb = p.gB + ((k.s * B + k.b) * G + k.g) * N * L;
    T* gc = p.gC + ((k.s * B + k.b) * G + k.g) * N * L;
    for (int64_t t = 0; t < L; ++t)
      for (int64_t n = 0; n < N; ++n) {
        gb[n * L + t] = vhsum<V, W>(dbp[t * N + n]);
        gc[n * L + t] = vhsum<V, W>(dcp[t * N + n]);
      }
  }
}

// ---------------------------------------------------------------------------------------
// Instantiations per ISA. Each entry is a plain (non-inline) function with its own target
// attribute; the templates above are always_inline and so compiled for that target.
// ---------------------------------------------------------------------------------------

#define SS_ENTRIES(SUFFIX, ATTR, T, W)                                               \
  ATTR void fwd_##SUFFIX(const Params<T>& p, int64_t a, int64_t b) {                 \
    if (p.N == 16)                                                                   \
      forward_tasks<T, W, 16>(p, a, b);                                              \
    else                                                                             \
      forward_tasks<T, W, 0>(p, a, b);                                               \
  }                                                                                  \
  ATTR void bwd_##SUFFIX(const Params<T>& p, int64_t a, int64_t b) {                 \
    if (p.N == 16)                                                                   \
      backward_tasks<T, W, 16>(p, a, b);                                             \
    else                                                                             \
      backward_tasks<T, W, 0>(p, a, b);                                              \
  }

SS_ENTRIES(f32_sse, , float, 4)
SS_ENTRIES(f64, , double, 2)
#if defined(__x86_64__) || defined(__i386__)
#define SS_HAVE_X86 1
SS_ENTRIES(f32_avx2, __attribute__((target("avx2,fma"))), float, 8)
SS_ENTRIES(f32_avx512, __attribute__((target("avx512f,avx2,fma"))), float, 16)
#else
#define SS_HAVE_X86 0
#endif

int cpu_isa() {
#if SS_HAVE_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}

int g_max_isa = 2;

int active_isa() { return std::min(cpu_isa(), g_max_isa); }

template <typename T>
using Entry = void (*)(const Params<T>&, int64_t, int64_t);

int lanes_f32() {
  const int isa = active_isa();
  return isa == 2 ? 16 : isa == 1 ? 8 : 4;
}

Entry<float> pick_f32(bool backward) {
#if SS_HAVE_X86
  const int isa = active_isa();
  if (isa == 2) return backward ? bwd_f32_avx512 : fwd_f32_avx512;
  if (isa == 1) return backward ? bwd_f32_avx2 : fwd_f32_avx2;
#endif
  return backward ? bwd_f32_sse : fwd_f32_sse;
}

Entry<float> pick(float*, bool backward) { return pick_f32(backward); }
Entry<double> pick(double*, bool backward) { return backward ? bwd_f64 : fwd_f64; }

// float32 kernels run with denormals flushed to zero (FTZ + DAZ, restored afterwards):
// products like exp(dt A) h of a nearly dead state can be subnormal, and subnormal
// arithmetic is many times slower on x86; their values (< 1.2e-38) do not matter.
template <typename T>
void run_tasks(Entry<T> fn, const Params<T>& p, int64_t a, int64_t b) {
#if SS_HAVE_X86
  if constexpr (std::is_same_v<T, float>) {
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u);  // FTZ (bit 15) | DAZ (bit 6)
    fn(p, a, b);
    _mm_setcsr(csr);
    return;
  }
#endif
  fn(p, a, b);
}

// Splits of a group's channel blocks: enough tasks for the threads (S = 1 for training
// shapes, B * G = 128 tasks).
int64_t num_splits(int64_t B, int64_t G, int64_t nblk) {
  const int64_t want = 4 * std::max<int64_t>(1, at::get_num_threads());
  int64_t s = 1;
  while (B * G * s < want && s < nblk) ++s;
  return s;
}

struct Shapes {
  int64_t B, KD, L, N, G;
};

Shapes check(const at::Tensor& u, const at::Tensor& dt, const at::Tensor& A,
             const at::Tensor& Bs, const at::Tensor& Cs, const std::optional<at::Tensor>& D) {
  TORCH_CHECK(u.device().is_cpu(), "native selective scan: CPU tensors only");
  const auto dtype = u.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "native selective scan: float32 or float64 only");
  TORCH_CHECK(u.dim() == 3 && dt.sizes() == u.sizes(), "u and dt must be [B, KD, L]");
  const int64_t B = u.size(0), KD = u.size(1), L = u.size(2);
  TORCH_CHECK(A.dim() == 2 && A.size(0) == KD, "A must be [KD, N]");
  const int64_t N = A.size(1);
  TORCH_CHECK(N >= 1 && N <= kMaxN, "native selective scan supports 1 <= N <= ", kMaxN);
  TORCH_CHECK(Bs.dim() == 4 && Bs.size(0) == B && Bs.size(2) == N && Bs.size(3) == L,
              "Bs must be [B, G, N, L]");
  TORCH_CHECK(Cs.sizes() == Bs.sizes(), "Cs must have the shape of Bs");
  const int64_t G = Bs.size(1);
  TORCH_CHECK(G >= 1 && KD % G == 0, "KD must be a multiple of G");
  for (const at::Tensor* t : {&u, &dt, &A, &Bs, &Cs}) {
    TORCH_CHECK(t->scalar_type() == dtype, "all inputs must have one dtype");
    TORCH_CHECK(t->is_contiguous(), "inputs must be contiguous");
  }
  if (D) {
    TORCH_CHECK(D->scalar_type() == dtype && D->is_contiguous() && D->numel() == KD,
                "D must be a contiguous [KD] tensor of the inputs' dtype");
  }
  return {B, KD, L, N, G};
}

template <typename T>
Params<T> make_params(const Shapes& s, int64_t S, const at::Tensor& u, const at::Tensor& dt,
                      const at::Tensor& A, const at::Tensor& Bs, const at::Tensor& Cs,
                      const std::optional<at::Tensor>& D) {
  Params<T> p{};
  p.B = s.B;
  p.KD = s.KD;
  p.L = s.L;
  p.N = s.N;
  p.G = s.G;
  p.Dg = s.KD / s.G;
  p.S = S;
  p.u = u.data_ptr<T>();
  p.dt = dt.data_ptr<T>();
  p.A = A.data_ptr<T>();
  p.Bs = Bs.data_ptr<T>();
  p.Cs = Cs.data_ptr<T>();
  p.D = D ? D->data_ptr<T>() : nullptr;
  return p;
}

int64_t lanes_for(at::ScalarType dtype) { return dtype == at::kDouble ? 2 : lanes_f32(); }

at::Tensor scan_forward(const at::Tensor& u, const at::Tensor& dt, const at::Tensor& A,
                        const at::Tensor& Bs, const at::Tensor& Cs,
                        const std::optional<at::Tensor>& D) {
  const Shapes s = check(u, dt, A, Bs, Cs, D);
  at::Tensor y = at::empty_like(u);
  if (u.numel() == 0) return y;
  const int64_t W = lanes_for(u.scalar_type());
  const int64_t nblk = (s.KD / s.G + W - 1) / W;
  const int64_t S = num_splits(s.B, s.G, nblk);
  const int64_t ntasks = s.B * s.G * S;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_forward", [&] {
    Params<scalar_t> p = make_params<scalar_t>(s, S, u, dt, A, Bs, Cs, D);
    p.y = y.data_ptr<scalar_t>();
    const Entry<scalar_t> fn = pick(static_cast<scalar_t*>(nullptr), false);
    at::parallel_for(0, ntasks, 1, [&](int64_t a, int64_t b) { run_tasks(fn, p, a, b); });
  });
  return y;
}

// Returns (du, ddelta, dA, dBs, dCs, dD, ddelta_bias); ddelta = d(dt) * softplus' if
// softplus. dD and ddelta_bias are always computed (cheap); the caller drops unused ones.
std::vector<at::Tensor> scan_backward(const at::Tensor& gy, const at::Tensor& u,
                                      const at::Tensor& dt, const at::Tensor& A,
                                      const at::Tensor& Bs, const at::Tensor& Cs,
                                      const std::optional<at::Tensor>& D, bool softplus) {
  const Shapes s = check(u, dt, A, Bs, Cs, D);
  TORCH_CHECK(gy.sizes() == u.sizes() && gy.scalar_type() == u.scalar_type() &&
                  gy.is_contiguous(),
              "gy must be a contiguous tensor like u");
  const int64_t W = lanes_for(u.scalar_type());
  const int64_t nblk = (s.KD / s.G + W - 1) / W;
  const int64_t S = num_splits(s.B, s.G, nblk);
  const int64_t ntasks = s.B * s.G * S;
  // every element of these is written by exactly one task (zeros only when there is no
  // work, e.g. L = 0, where the sums below must still be zero)
  const auto alloc = [&](at::IntArrayRef size) {
    return u.numel() > 0 ? at::empty(size, u.options()) : at::zeros(size, u.options());
  };
  at::Tensor gu = alloc(u.sizes()), gdelta = alloc(u.sizes());
  at::Tensor gA = alloc({s.B, s.KD, s.N});
  at::Tensor gB = alloc({S, s.B, s.G, s.N, s.L});
  at::Tensor gC = alloc({S, s.B, s.G, s.N, s.L});
  at::Tensor gD = alloc({s.B, s.KD});
  at::Tensor gbias = alloc({s.B, s.KD});
  if (u.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_backward", [&] {
      Params<scalar_t> p = make_params<scalar_t>(s, S, u, dt, A, Bs, Cs, D);
      p.gy = gy.data_ptr<scalar_t>();
      p.softplus = softplus;
      p.gu = gu.data_ptr<scalar_t>();
      p.gdelta = gdelta.data_ptr<scalar_t>();
      p.gA = gA.data_ptr<scalar_t>();
      p.gB = gB.data_ptr<scalar_t>();
      p.gC = gC.data_ptr<scalar_t>();
      p.gD = gD.data_ptr<scalar_t>();
      p.gbias = gbias.data_ptr<scalar_t>();
      const Entry<scalar_t> fn = pick(static_cast<scalar_t*>(nullptr), true);
      at::parallel_for(0, ntasks, 1, [&](int64_t a, int64_t b) { run_tasks(fn, p, a, b); });
    });
  }
  return {gu, gdelta, gA.sum(0), S == 1 ? gB[0] : gB.sum(0), S == 1 ? gC[0] : gC.sum(0),
          gD.sum(0), gbias.sum(0)};
}

int set_max_isa(int level) {
  g_max_isa = std::max(0, std::min(2, level));
  return active_isa();
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fer-edge native CPU selective scan (forward and backward)";
  m.def("forward", &scan_forward, "y = scan(u, dt, A, Bs, Cs, D)");
  m.def("backward", &scan_backward, "grads of (u, delta, A, Bs, Cs, D, delta_bias)");
  m.def("cpu_isa", &cpu_isa, "widest ISA of this CPU: 0 SSE2, 1 AVX2+FMA, 2 AVX-512F");
  m.def("active_isa", &active_isa, "ISA used by the float32 kernels");
  m.def("set_max_isa", &set_max_isa, "cap the ISA (0, 1, 2); returns the one now used");
}
