// Ferrum's CPU kernels for q4f32 Llama blocks (AVX-512 + VNNI), linked into model.so.
//
// Why: TVM's generated CPU GEMVs enter the thread pool once per small op and dequantize every
// weight to float; a decode step was overhead-bound at a quarter of the memory bandwidth. Each
// kernel here is one fused step of a block in ONE parallel region of TVM's thread pool
// (TVMBackendParallelLaunch, so it shares the threads TVM's own kernels use):
//
//   RMSNorm + QKV, O-projection + residual, RMSNorm + gate/up + SwiGLU, down + residual,
//   final RMSNorm + int8 LM head; and the paged KV cache's decode attention (vectorized softmax).
//
// The activation rows are quantized per block of 32 as TWO int8 terms, x ~ d q1 + d2 q2 with
// d = max|x| / 127 (GGUF's Q8_1) and q2 the rounded remainder at d2 = d / 254: about 15 bits, so
// the products are float32-close (one int8 term, as llama.cpp uses, changed SmolLM2's greedy
// tokens within five). Both terms meet the weights in VNNI (vpdpbusd: 16 lanes x 4 u8*s8). The
// weights are the q4f32 layout (compile/quantize.py): int4 words (out/16, in/8, 16), so one 64-byte
// load is one word (8 inputs) of 16 output rows; their low nibbles are inputs 0,2,4,6 and high
// nibbles 1,3,5,7, so each 8 inputs of x are stored in that order and a lane's 4 bytes meet the
// broadcast of 4 x bytes. The Q4_1 minimum is factored out of the sum:
//   sum_k (q_k s + m) x_k = s * d * sum_k q_k xq_k + m * sum_k x_k     (per block of 32)
// with sum_k x_k in float32 from the unrounded activations. The int8 LM head (Q8_0) is stored
// (out/16, in/4, 16*4) in the permuted input order; its signed bytes are made unsigned by
// flipping the top bit (w + 128) and 128 * sum_k xq_k is subtracted.
//
// Rows of x are processed MB at a time against NT tiles of 16 output rows, accumulators in
// registers; threads split the tiles, each runs every row of x over its tiles while they are in
// cache (prefill). Scratch for the quantized activations is per calling thread and grows once.

#include <dlpack/dlpack.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>

// TVM's runtime thread pool (tvm/runtime/c_backend_api.h, exported by libtvm_runtime, which
// loads model.so): declared here so the kernels need only the tvm-ffi headers.
extern "C" {
typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void* cdata, int num_task);
}

namespace ferrum_cpu {
namespace {

constexpr int kRows = 16;   // output rows per tile (the weights' interleave)
constexpr int kGroup = 32;  // inputs per quantization block

void require(bool ok, const char* what) {
  if (!ok) TVM_FFI_THROW(ValueError) << "ferrum CPU kernels: " << what;
}

int64_t numel(const DLTensor* t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; ++i) n *= t->shape[i];
  return n;
}

bool is(const DLTensor* t, DLDataTypeCode code, int bits) {
  return t->dtype.code == code && t->dtype.bits == bits && t->dtype.lanes == 1;
}

template <typename T>
T* ptr(const DLTensor* t) {
  return reinterpret_cast<T*>(static_cast<char*>(t->data) + t->byte_offset);
}

// Run f(begin, end) over [0, n) split evenly across TVM's pool (one parallel region).
template <class F>
void parallel_for(int n, F& f) {
  struct Ctx {
    F* f;
    int n;
  } ctx{&f, n};
  auto body = [](int task, TVMParallelGroupEnv* env, void* data) -> int {
    auto* c = static_cast<Ctx*>(data);
    const int64_t tasks = env->num_task;
    const int b = static_cast<int>(c->n * task / tasks), e = static_cast<int>(c->n * (task + 1) / tasks);
    if (b < e) (*c->f)(b, e);
    return 0;
  };
  if (n <= 1) {
    if (n == 1) f(0, 1);
    return;
  }
  require(TVMBackendParallelLaunch(body, &ctx, 0) == 0, "a parallel task failed");
}

// Activation rows quantized per block of 32 in two int8 terms, each 8 inputs stored as
// 0,2,4,6,1,3,5,7; term t of row m starts at q + (2m + t) K.
struct QRows {
  int M = 0, K = 0;
  int8_t* q = nullptr;      // 2M x K
  float* d = nullptr;       // M x K/32: scale of the first term (the second's is d / 254)
  float* sum = nullptr;     // M x K/32: sum of the unrounded values (the Q4_1 minimum's factor)
  int32_t* qsum = nullptr;  // 2M x K/32: sums of each term's int8 values (the int8 head's +128 correction)

  const int8_t* row(int m, int term) const { return q + (2 * static_cast<size_t>(m) + term) * K; }
};

constexpr float kSecond = 254.f;  // first-term scale / second-term scale

struct Scratch {
  std::vector<int8_t> q;
  std::vector<float> f;
  std::vector<int32_t> i;
};

QRows scratch_rows(int M, int K) {
  thread_local Scratch s;
  const size_t blocks = static_cast<size_t>(M) * (K / kGroup);
  if (s.q.size() < 2 * static_cast<size_t>(M) * K) s.q.resize(2 * static_cast<size_t>(M) * K);
  if (s.f.size() < 2 * blocks) s.f.resize(2 * blocks);
  if (s.i.size() < 2 * blocks) s.i.resize(2 * blocks);
  return QRows{M, K, s.q.data(), s.f.data(), s.f.data() + blocks, s.i.data()};
}

// Quantize row m of x (times rms_scale * g when g is given: RMSNorm fused in).
void quantize_row(const float* x, const float* g, float eps, const QRows& r, int m) {
  const int K = r.K;
  float scale = 1.f;
  if (g != nullptr) {
    __m512 ss = _mm512_setzero_ps();
    for (int k = 0; k < K; k += 16) {
      const __m512 v = _mm512_loadu_ps(x + k);
      ss = _mm512_fmadd_ps(v, v, ss);
    }
    scale = 1.f / std::sqrt(_mm512_reduce_add_ps(ss) / K + eps);
  }
  const __m512 vs = _mm512_set1_ps(scale);
  const __m128i order = _mm_setr_epi8(0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15);
  const __m512 sign = _mm512_set1_ps(-0.f);
  for (int b = 0; b < K / kGroup; ++b) {
    const int k = b * kGroup;
    __m512 v0 = _mm512_mul_ps(_mm512_loadu_ps(x + k), vs), v1 = _mm512_mul_ps(_mm512_loadu_ps(x + k + 16), vs);
    if (g != nullptr) {
      v0 = _mm512_mul_ps(v0, _mm512_loadu_ps(g + k));
      v1 = _mm512_mul_ps(v1, _mm512_loadu_ps(g + k + 16));
    }
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
    const float d = amax / 127.f;
    const __m512 id = _mm512_set1_ps(d > 0.f ? 1.f / d : 0.f), id2 = _mm512_set1_ps(d > 0.f ? kSecond / d : 0.f);
    const __m512 vd = _mm512_set1_ps(d);
    const size_t at = static_cast<size_t>(m) * (K / kGroup) + b;
    r.d[at] = d;
    r.sum[at] = _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
    __m512 rest0 = v0, rest1 = v1;
    for (int term = 0; term < 2; ++term) {
      const __m512 scale_inv = term == 0 ? id : id2;
      const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(rest0, scale_inv));
      const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(rest1, scale_inv));
      int8_t* out = const_cast<int8_t*>(r.row(m, term)) + k;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_shuffle_epi8(_mm512_cvtsepi32_epi8(q0), order));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), _mm_shuffle_epi8(_mm512_cvtsepi32_epi8(q1), order));
      r.qsum[2 * at + term] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
      rest0 = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(q0), vd, rest0);  // the remainder the second term rounds
      rest1 = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(q1), vd, rest1);
    }
  }
}

QRows quantize(const float* x, const float* g, float eps, int M, int K) {
  QRows r = scratch_rows(M, K);
  auto rows = [&](int b, int e) {
    for (int m = b; m < e; ++m) quantize_row(x + static_cast<size_t>(m) * K, g, eps, r, m);
  };
  if (M < 16) {
    rows(0, M);
  } else {
    parallel_for(M, rows);
  }
  return r;
}

inline __m512i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// int4 weights (Q4_1): acc[t*MB + m] = rows m0..m0+MB-1 of x times tiles[t].
struct Q4Weights {
  const uint32_t* qw;  // (tiles, K/8, 16)
  const float* qs;     // (tiles, K/32, 16)
  const float* qm;

  template <int MB, int NT>
  void tiles(const QRows& a, int m0, const int* tile, __m512* acc) const {
    const int K = a.K, words = K / 8, blocks = K / kGroup;
    const __m512i mask = _mm512_set1_epi8(0x0F);
    for (int i = 0; i < MB * NT; ++i) acc[i] = _mm512_setzero_ps();
    for (int j = 0; j < blocks; ++j) {
      __m512i i1[MB * NT], i2[MB * NT];  // the two activation terms' integer sums
      for (int i = 0; i < MB * NT; ++i) i1[i] = i2[i] = _mm512_setzero_si512();
#pragma GCC unroll 4
      for (int w = 0; w < 4; ++w) {
        const int c = j * 4 + w;
        for (int t = 0; t < NT; ++t) {
          const __m512i W = _mm512_loadu_si512(qw + (static_cast<size_t>(tile[t]) * words + c) * kRows);
          const __m512i lo = _mm512_and_si512(W, mask), hi = _mm512_and_si512(_mm512_srli_epi32(W, 4), mask);
          for (int m = 0; m < MB; ++m) {
            const int8_t* x1 = a.row(m0 + m, 0) + c * 8;
            const int8_t* x2 = a.row(m0 + m, 1) + c * 8;
            i1[t * MB + m] = _mm512_dpbusd_epi32(i1[t * MB + m], lo, bcast4(x1));
            i1[t * MB + m] = _mm512_dpbusd_epi32(i1[t * MB + m], hi, bcast4(x1 + 4));
            i2[t * MB + m] = _mm512_dpbusd_epi32(i2[t * MB + m], lo, bcast4(x2));
            i2[t * MB + m] = _mm512_dpbusd_epi32(i2[t * MB + m], hi, bcast4(x2 + 4));
          }
        }
      }
      for (int t = 0; t < NT; ++t) {
        const size_t at = (static_cast<size_t>(tile[t]) * blocks + j) * kRows;
        const __m512 S = _mm512_loadu_ps(qs + at), Mn = _mm512_loadu_ps(qm + at);
        for (int m = 0; m < MB; ++m) {
          const size_t xb = static_cast<size_t>(m0 + m) * blocks + j;
          const __m512 n = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i2[t * MB + m]), _mm512_set1_ps(1.f / kSecond),
                                           _mm512_cvtepi32_ps(i1[t * MB + m]));
          acc[t * MB + m] = _mm512_fmadd_ps(n, _mm512_mul_ps(S, _mm512_set1_ps(a.d[xb])), acc[t * MB + m]);
          acc[t * MB + m] = _mm512_fmadd_ps(Mn, _mm512_set1_ps(a.sum[xb]), acc[t * MB + m]);
        }
      }
    }
  }
};

// int8 weights (Q8_0, the LM head): (tiles, K/4, 16 * 4) in the permuted input order.
struct Q8Weights {
  const int8_t* qw;
  const float* qs;  // (tiles, K/32, 16)

  template <int MB, int NT>
  void tiles(const QRows& a, int m0, const int* tile, __m512* acc) const {
    const int K = a.K, blocks = K / kGroup;
    const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
    for (int i = 0; i < MB * NT; ++i) acc[i] = _mm512_setzero_ps();
    for (int j = 0; j < blocks; ++j) {
      __m512i i1[MB * NT], i2[MB * NT];
      for (int i = 0; i < MB * NT; ++i) i1[i] = i2[i] = _mm512_setzero_si512();
#pragma GCC unroll 8
      for (int gq = 0; gq < 8; ++gq) {
        const int g4 = j * 8 + gq;
        for (int t = 0; t < NT; ++t) {
          const __m512i W = _mm512_xor_si512(
              _mm512_loadu_si512(qw + (static_cast<size_t>(tile[t]) * (K / 4) + g4) * 64), flip);
          for (int m = 0; m < MB; ++m) {
            i1[t * MB + m] = _mm512_dpbusd_epi32(i1[t * MB + m], W, bcast4(a.row(m0 + m, 0) + g4 * 4));
            i2[t * MB + m] = _mm512_dpbusd_epi32(i2[t * MB + m], W, bcast4(a.row(m0 + m, 1) + g4 * 4));
          }
        }
      }
      for (int t = 0; t < NT; ++t) {
        const __m512 S = _mm512_loadu_ps(qs + (static_cast<size_t>(tile[t]) * blocks + j) * kRows);
        for (int m = 0; m < MB; ++m) {
          const size_t xb = static_cast<size_t>(m0 + m) * blocks + j;
          const __m512i c1 = _mm512_sub_epi32(i1[t * MB + m], _mm512_set1_epi32(128 * a.qsum[2 * xb]));
          const __m512i c2 = _mm512_sub_epi32(i2[t * MB + m], _mm512_set1_epi32(128 * a.qsum[2 * xb + 1]));
          const __m512 n = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c2), _mm512_set1_ps(1.f / kSecond), _mm512_cvtepi32_ps(c1));
          acc[t * MB + m] = _mm512_fmadd_ps(n, _mm512_mul_ps(S, _mm512_set1_ps(a.d[xb])), acc[t * MB + m]);
        }
      }
    }
  }
};

// 2^x (softmax weights, SiLU): 2^round(x) * p(x - round(x)), p the degree-6 Taylor
// polynomial of 2^f on [-1/2, 1/2] (relative error ~1e-7, float32's own rounding).
inline __m512 exp2_ps(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.5403530393381606e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// Tiles per group for MB rows: two (four independent integer chains at one row) up to four rows,
// one above, so the 3 x MB x NT accumulators (two integer terms and the float sum) stay in the 32
// vector registers. More tiles at one row were slower: each tile is a weight stream and two scale
// streams, and eight tiles' 24 streams defeat the hardware prefetcher (measured, 1 thread, weights
// streamed from DRAM: gate/up 103 us at 8 tiles, 82 at 4, 65 at 2).
constexpr int tiles_for(int mb) { return mb <= 4 ? 2 : 1; }

// The output epilogues. Plain and residual write tile t's 16 rows; SwiGLU pairs gate tile t with
// up tile t + NT/2 of the same group.
enum class Epilogue { kPlain, kResidual, kSwiGLU };

struct Output {
  float* out;
  const float* res;
  int N;  // output width (rows of out)
};

template <Epilogue E, int MB, int NT>
void store(const Output& o, int m0, const int* tile, const __m512* acc) {
  if constexpr (E == Epilogue::kSwiGLU) {
    for (int t = 0; t < NT / 2; ++t) {
      for (int m = 0; m < MB; ++m) {
        const __m512 g = acc[t * MB + m], u = acc[(t + NT / 2) * MB + m];
        const __m512 e = exp2_ps(_mm512_mul_ps(g, _mm512_set1_ps(-1.4426950408889634f)));  // exp(-g)
        const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.f), e));
        _mm512_storeu_ps(o.out + static_cast<size_t>(m0 + m) * o.N + tile[t] * kRows, _mm512_mul_ps(silu, u));
      }
    }
  } else {
    for (int t = 0; t < NT; ++t) {
      for (int m = 0; m < MB; ++m) {
        const size_t at = static_cast<size_t>(m0 + m) * o.N + tile[t] * kRows;
        __m512 v = acc[t * MB + m];
        if constexpr (E == Epilogue::kResidual) v = _mm512_add_ps(v, _mm512_loadu_ps(o.res + at));
        _mm512_storeu_ps(o.out + at, v);
      }
    }
  }
}

// Rows of x chunked by MB against groups of NT tiles: group g holds tiles g*NT .. g*NT+NT-1, or
// for SwiGLU gate tiles g*NT/2 .. and the matching up tiles (offset by half the tiles).
template <Epilogue E, int MB, class W>
void run_rows(const W& w, const QRows& a, const Output& o, int m0, int m1, int tiles_total) {
  constexpr int NT = tiles_for(MB);
  static_assert(E != Epilogue::kSwiGLU || NT >= 2, "SwiGLU pairs a gate and an up tile: at most 4 rows");
  const int units = E == Epilogue::kSwiGLU ? tiles_total / 2 : tiles_total;  // SwiGLU: gate/up tile pairs
  const int per = E == Epilogue::kSwiGLU ? NT / 2 : NT;
  // groups of `per` units in parallel; the last task takes a remainder one unit at a time
  const int groups = units / per, rest = units % per;
  auto body = [&](int b, int e) {
    __m512 acc[MB * NT];
    int tile[NT];
    for (int gi = b; gi < e; ++gi) {
      for (int m = m0; m < m1; m += MB) {
        if (gi < groups) {
          for (int t = 0; t < per; ++t) tile[t] = gi * per + t;
          if constexpr (E == Epilogue::kSwiGLU)
            for (int t = 0; t < per; ++t) tile[per + t] = units + gi * per + t;
          w.template tiles<MB, NT>(a, m, tile, acc);
          store<E, MB, NT>(o, m, tile, acc);
        } else {
          constexpr int NT1 = E == Epilogue::kSwiGLU ? 2 : 1;
          __m512 acc1[MB * NT1];
          int one[NT1];
          for (int u = groups * per; u < units; ++u) {
            one[0] = u;
            if constexpr (E == Epilogue::kSwiGLU) one[1] = units + u;
            w.template tiles<MB, NT1>(a, m, one, acc1);
            store<E, MB, NT1>(o, m, one, acc1);
          }
        }
      }
    }
  };
  parallel_for(groups + (rest ? 1 : 0), body);
}

template <Epilogue E, class W>
void run(const W& w, const QRows& a, const Output& o, int tiles_total) {
  constexpr int R = E == Epilogue::kSwiGLU ? 4 : 8;  // rows per chunk (SwiGLU needs two tiles)
  const int M = a.M;
  const int full = M / R * R;
  if (full) run_rows<E, R>(w, a, o, 0, full, tiles_total);
  switch (M - full) {
    case 1: run_rows<E, 1>(w, a, o, full, M, tiles_total); break;
    case 2: run_rows<E, 2>(w, a, o, full, M, tiles_total); break;
    case 3: run_rows<E, 3>(w, a, o, full, M, tiles_total); break;
    case 4: run_rows<E, 4>(w, a, o, full, M, tiles_total); break;
    case 5: if constexpr (R > 5) run_rows<E, 5>(w, a, o, full, M, tiles_total); break;
    case 6: if constexpr (R > 6) run_rows<E, 6>(w, a, o, full, M, tiles_total); break;
    case 7: if constexpr (R > 7) run_rows<E, 7>(w, a, o, full, M, tiles_total); break;
    default: break;
  }
}

struct Shape {
  int M, N, K;
};

Shape check(const DLTensor* x, const DLTensor* out, int64_t K, int64_t N) {
  require(x->device.device_type == kDLCPU && out->device.device_type == kDLCPU, "tensors must be on the CPU");
  require(is(x, kDLFloat, 32) && is(out, kDLFloat, 32), "activations and outputs must be float32");
  require(x->shape[x->ndim - 1] == K, "activation width does not match the weight");
  require(K % kGroup == 0 && N % kRows == 0, "widths must be multiples of 32 (inputs) and 16 (outputs)");
  require(out->shape[out->ndim - 1] == N, "output width does not match the weight");
  const int64_t M = numel(x) / K;
  require(numel(out) == M * N, "output rows do not match the input rows");
  return Shape{static_cast<int>(M), static_cast<int>(N), static_cast<int>(K)};
}

Q4Weights q4(const DLTensor* qw, const DLTensor* qs, const DLTensor* qm, const Shape& s) {
  require(is(qw, kDLUInt, 32) && qw->ndim == 3 && qw->shape[2] == kRows, "int4 weights must be (out/16, in/8, 16) uint32");
  require(is(qs, kDLFloat, 32) && is(qm, kDLFloat, 32) && numel(qs) == static_cast<int64_t>(s.N) * s.K / kGroup &&
              numel(qm) == numel(qs), "int4 scales and minimums must be float32, one per 32 inputs of a row");
  return Q4Weights{ptr<uint32_t>(qw), ptr<float>(qs), ptr<float>(qm)};
}

const float* norm_weight(const DLTensor* g, int K) {
  require(is(g, kDLFloat, 32) && numel(g) == K, "the norm weight must be float32 of the input width");
  return ptr<float>(g);
}

void norm_linear_q4(DLTensor* x, DLTensor* g, DLTensor* qw, DLTensor* qs, DLTensor* qm, double eps, DLTensor* out) {
  const Shape s = check(x, out, qw->shape[1] * 8, qw->shape[0] * kRows);
  const QRows a = quantize(ptr<float>(x), norm_weight(g, s.K), static_cast<float>(eps), s.M, s.K);
  run<Epilogue::kPlain>(q4(qw, qs, qm, s), a, Output{ptr<float>(out), nullptr, s.N}, s.N / kRows);
}

void linear_res_q4(DLTensor* x, DLTensor* qw, DLTensor* qs, DLTensor* qm, DLTensor* res, DLTensor* out) {
  const Shape s = check(x, out, qw->shape[1] * 8, qw->shape[0] * kRows);
  require(is(res, kDLFloat, 32) && numel(res) == numel(out), "the residual must match the float32 output");
  const QRows a = quantize(ptr<float>(x), nullptr, 0.f, s.M, s.K);
  run<Epilogue::kResidual>(q4(qw, qs, qm, s), a, Output{ptr<float>(out), ptr<float>(res), s.N}, s.N / kRows);
}

void norm_gate_up_q4(DLTensor* x, DLTensor* g, DLTensor* qw, DLTensor* qs, DLTensor* qm, double eps, DLTensor* out) {
  const int64_t rows = qw->shape[0] * kRows;
  require(rows % (2 * kRows) == 0, "gate/up rows must be two multiples of 16");
  const Shape s = check(x, out, qw->shape[1] * 8, rows / 2);
  const Shape w{s.M, static_cast<int>(rows), s.K};
  const QRows a = quantize(ptr<float>(x), norm_weight(g, s.K), static_cast<float>(eps), s.M, s.K);
  run<Epilogue::kSwiGLU>(q4(qw, qs, qm, w), a, Output{ptr<float>(out), nullptr, s.N}, w.N / kRows);
}

void norm_logits_q8(DLTensor* x, DLTensor* g, DLTensor* qw, DLTensor* qs, double eps, DLTensor* out) {
  require(is(qw, kDLInt, 8) && qw->ndim == 3 && qw->shape[2] == 4 * kRows, "int8 weights must be (out/16, in/4, 64) int8");
  const Shape s = check(x, out, qw->shape[1] * 4, qw->shape[0] * kRows);
  require(is(qs, kDLFloat, 32) && numel(qs) == static_cast<int64_t>(s.N) * s.K / kGroup,
          "int8 scales must be float32, one per 32 inputs of a row");
  const QRows a = quantize(ptr<float>(x), norm_weight(g, s.K), static_cast<float>(eps), s.M, s.K);
  run<Epilogue::kPlain>(Q8Weights{ptr<int8_t>(qw), ptr<float>(qs)}, a, Output{ptr<float>(out), nullptr, s.N},
                        s.N / kRows);
}

constexpr int kMaxHeadDim = 256;
constexpr int kKeyChunk = 64;  // keys scored at a time; the softmax is rescaled once per chunk

// One query row against keys 0..n_keys-1 (``key(p)``/``value(p)`` give their rows): scores per
// chunk, then their exponentials (vectorized) and the weighted values; the output is rescaled once
// per chunk. lse is base 2, as TVM's kernels write it (the cache merges attention states with it).
template <class Key, class Value>
void attend(const float* q, int n_keys, const Key& key, const Value& value, int D, float scale_log2, float* out,
            float* lse) {
  alignas(64) float acc[kMaxHeadDim] = {};
  alignas(64) float score[kKeyChunk];
  float run_max = -5e4f, run_sum = 0.f;
  for (int start = 0; start < n_keys; start += kKeyChunk) {
    const int count = std::min(kKeyChunk, n_keys - start);
    float chunk_max = run_max;
    for (int i = 0; i < count; ++i) {
      const float* k = key(start + i);
      __m512 dot = _mm512_setzero_ps();
      for (int d = 0; d < D; d += 16) dot = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(k + d), dot);
      score[i] = _mm512_reduce_add_ps(dot) * scale_log2;
      chunk_max = std::max(chunk_max, score[i]);
    }
    for (int i = count; i < (count + 15) / 16 * 16; ++i) score[i] = -1e30f;  // padding lanes weigh 0
    const float rescale = exp2_ps(_mm512_set1_ps(run_max - chunk_max))[0];
    run_max = chunk_max;
    __m512 sum = _mm512_setzero_ps();
    for (int i = 0; i < count; i += 16) {
      const __m512 e = exp2_ps(_mm512_sub_ps(_mm512_load_ps(score + i), _mm512_set1_ps(run_max)));
      _mm512_store_ps(score + i, e);
      sum = _mm512_add_ps(sum, e);
    }
    run_sum = run_sum * rescale + _mm512_reduce_add_ps(sum);
    const __m512 r = _mm512_set1_ps(rescale);
    for (int d = 0; d < D; d += 16) _mm512_store_ps(acc + d, _mm512_mul_ps(_mm512_load_ps(acc + d), r));
    for (int i = 0; i < count; ++i) {
      const float* v = value(start + i);
      const __m512 w = _mm512_set1_ps(score[i]);
      for (int d = 0; d < D; d += 16)
        _mm512_store_ps(acc + d, _mm512_fmadd_ps(w, _mm512_loadu_ps(v + d), _mm512_load_ps(acc + d)));
    }
  }
  const float denom = std::max(run_sum, 1e-30f);
  const __m512 inv = _mm512_set1_ps(1.f / denom);
  for (int d = 0; d < D; d += 16) _mm512_storeu_ps(out + d, _mm512_mul_ps(_mm512_load_ps(acc + d), inv));
  *lse = run_max + std::log2(denom);
}

bool compact(const DLTensor* t) {
  if (t->strides == nullptr) return true;
  int64_t expected = 1;
  for (int i = t->ndim - 1; i >= 0; --i) {
    if (t->shape[i] != 1 && t->strides[i] != expected) return false;
    expected *= t->shape[i];
  }
  return true;
}

// The paged KV cache's decode attention (TVM's batch_decode_paged_kv signature, RopeMode.NORMAL:
// keys were rotated when appended; pages [page, k/v, kv head, slot, d]): every (sequence, query
// head) pair in one parallel region.
void attention_decode_paged(DLTensor* q, DLTensor* pages, DLTensor* page_indptr, DLTensor* page_values,
                            DLTensor* length_info, DLTensor* k_rope_pos_offset, DLTensor* q_rope_position,
                            DLTensor* output, DLTensor* lse, int64_t rotary_mode, double rope_scale, double rope_theta,
                            double sm_scale) {
  (void)k_rope_pos_offset;
  (void)q_rope_position;
  (void)rope_scale;
  (void)rope_theta;
  require(rotary_mode == 0, "attention with inline RoPE is not supported (the cache applies RoPE first)");
  require(is(q, kDLFloat, 32) && is(pages, kDLFloat, 32) && q->ndim == 3 && pages->ndim == 5 && length_info->ndim == 1,
          "decode attention: q [b, h_q, d] float32, pages [n, 2, h_kv, page_size, d], length_info [b]");
  require(compact(q) && compact(pages) && compact(output), "decode attention takes compact tensors");
  const int batch = static_cast<int>(q->shape[0]), h_q = static_cast<int>(q->shape[1]), D = static_cast<int>(q->shape[2]);
  const int h_kv = static_cast<int>(pages->shape[2]), page_size = static_cast<int>(pages->shape[3]);
  require(D % 16 == 0 && D <= kMaxHeadDim && h_q % h_kv == 0, "decode attention: head dim a multiple of 16 up to 256");
  const float* qp = ptr<float>(q);
  const float* pp = ptr<float>(pages);
  const int32_t* indptr = ptr<int32_t>(page_indptr);
  const int32_t* values = ptr<int32_t>(page_values);
  const int32_t* last_len = ptr<int32_t>(length_info);
  float* op = ptr<float>(output);
  float* lp = ptr<float>(lse);
  const float scale_log2 = static_cast<float>(sm_scale * 1.4426950408889634);
  const int group = h_q / h_kv;
  auto heads = [&](int b0, int e0) {
    for (int i = b0; i < e0; ++i) {
      const int b = i / h_q, h = i % h_q;
      const int begin = indptr[b], end = indptr[b + 1];
      const int n_keys = begin == end ? 0 : (end - begin - 1) * page_size + last_len[b];
      const int32_t* ids = values + begin;
      const size_t page_stride = 2 * static_cast<size_t>(h_kv) * page_size * D;
      const float* base = pp + static_cast<size_t>(h / group) * page_size * D;
      const size_t v_offset = static_cast<size_t>(h_kv) * page_size * D;
      auto key = [&](int p) { return base + ids[p / page_size] * page_stride + static_cast<size_t>(p % page_size) * D; };
      auto value = [&](int p) { return key(p) + v_offset; };
      attend(qp + static_cast<size_t>(i) * D, n_keys, key, value, D, scale_log2, op + static_cast<size_t>(i) * D, lp + i);
    }
  };
  parallel_for(batch * h_q, heads);
}

constexpr int kQueryBlock = 16;  // query rows per parallel work item of prefill attention

// The paged KV cache's ragged prefill attention (TVM's batch_prefill_ragged_kv signature): the new
// tokens of each sequence attending to each other, q/k/v [tokens, heads, d], causal bottom-right
// aligned (query i of a sequence sees keys up to i + kv_len - q_len). Work items are (sequence,
// query head, block of 16 queries), all in one parallel region.
void attention_prefill_ragged(DLTensor* q, DLTensor* qo_indptr, DLTensor* k, DLTensor* v, DLTensor* kv_indptr,
                              DLTensor* q_rope_position, DLTensor* k_rope_pos_offset, DLTensor* output, DLTensor* lse,
                              int64_t causal, int64_t rotary_mode, double rope_scale, double rope_theta,
                              double sm_scale) {
  (void)q_rope_position;
  (void)k_rope_pos_offset;
  (void)rope_scale;
  (void)rope_theta;
  require(rotary_mode == 0, "attention with inline RoPE is not supported (the cache applies RoPE first)");
  require(is(q, kDLFloat, 32) && is(k, kDLFloat, 32) && is(v, kDLFloat, 32) && is(output, kDLFloat, 32),
          "prefill attention inputs must be float32");
  require(q->ndim == 3 && k->ndim == 3 && q->shape[1] % k->shape[1] == 0, "q [n, h_q, d] and k [n, h_kv, d]");
  require(compact(q) && compact(k) && compact(v) && compact(output), "prefill attention takes compact tensors");
  const int batch = static_cast<int>(qo_indptr->shape[0] - 1);
  const int h_q = static_cast<int>(q->shape[1]), h_kv = static_cast<int>(k->shape[1]), D = static_cast<int>(q->shape[2]);
  require(D % 16 == 0 && D <= kMaxHeadDim, "prefill attention: head dim a multiple of 16 up to 256");
  if (batch <= 0 || q->shape[0] == 0) return;
  const int32_t* q_ptr = ptr<int32_t>(qo_indptr);
  const int32_t* kv_ptr = ptr<int32_t>(kv_indptr);
  std::vector<int> first_item(batch + 1, 0);  // work items of sequences before b
  for (int b = 0; b < batch; ++b)
    first_item[b + 1] = first_item[b] + h_q * ((q_ptr[b + 1] - q_ptr[b] + kQueryBlock - 1) / kQueryBlock);
  const float* qp = ptr<float>(q);
  const float* kp = ptr<float>(k);
  const float* vp = ptr<float>(v);
  float* op = ptr<float>(output);
  float* lp = ptr<float>(lse);
  const float scale_log2 = static_cast<float>(sm_scale * 1.4426950408889634);
  const int group = h_q / h_kv;
  auto items = [&](int b0, int e0) {
    int b = 0;
    for (int item = b0; item < e0; ++item) {
      while (item >= first_item[b + 1]) ++b;
      const int local = item - first_item[b], h = local % h_q, block = local / h_q;
      const int q_len = q_ptr[b + 1] - q_ptr[b], kv_len = kv_ptr[b + 1] - kv_ptr[b];
      const float* kb = kp + (static_cast<size_t>(kv_ptr[b]) * h_kv + h / group) * D;
      const float* vb = vp + (static_cast<size_t>(kv_ptr[b]) * h_kv + h / group) * D;
      auto key = [&](int p) { return kb + static_cast<size_t>(p) * h_kv * D; };
      auto value = [&](int p) { return vb + static_cast<size_t>(p) * h_kv * D; };
      for (int i = block * kQueryBlock; i < std::min(q_len, (block + 1) * kQueryBlock); ++i) {
        const int n_keys = causal ? std::min(kv_len, i + kv_len - q_len + 1) : kv_len;
        const size_t row = (static_cast<size_t>(q_ptr[b]) + i) * h_q + h;
        attend(qp + row * D, n_keys, key, value, D, scale_log2, op + row * D, lp + row);
      }
    }
  };
  parallel_for(first_item[batch], items);
}

}  // namespace
}  // namespace ferrum_cpu

TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_cpu_norm_linear_q4, ferrum_cpu::norm_linear_q4);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_cpu_linear_res_q4, ferrum_cpu::linear_res_q4);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_cpu_norm_gate_up_q4, ferrum_cpu::norm_gate_up_q4);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_cpu_norm_logits_q8, ferrum_cpu::norm_logits_q8);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_cpu_attention_decode_paged, ferrum_cpu::attention_decode_paged);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_cpu_attention_prefill_ragged, ferrum_cpu::attention_prefill_ragged);
