// Matrix-vector products for 1..8 activation rows (decode): y[m, n] = sum_k x[m, k] * W[n, k].
//
// Decoding reads every weight once per step, so these kernels are built to stream W at memory
// bandwidth: each warp owns R output features and walks K with 16-byte loads per lane, U chunks
// in flight, while the few activation rows stay in L1. The epilogues fuse what surrounds a
// linear layer in a Llama block so that no separate kernel runs for them:
//   OP_NORM   RMSNorm of x folded in: sum(x*g*w) and sum(x^2) in the same pass, scaled at the end
//   OP_GATED  SwiGLU: rows n (gate) and n + N (up) of W; y = silu(gate) * up
//   OP_RES    residual: y = res + x W^T
// Accumulation is float32 throughout.
#pragma once
#include "common.cuh"

namespace ferrum {

enum GemvOp { OP_PLAIN = 0, OP_NORM = 1, OP_GATED = 2, OP_RES = 3 };

constexpr int GEMV_WARPS = 4;

template <int MB, int R, int OP, typename OutT>
__device__ __forceinline__ void gemv_epilogue(float (&acc)[MB][(OP == OP_GATED ? 2 : 1) * R], float (&ss)[MB],
                                              const half* __restrict__ res, OutT* __restrict__ out, int M, int N,
                                              int K, int n0, float eps, int lane) {
  constexpr int W = (OP == OP_GATED ? 2 : 1) * R;
#pragma unroll
  for (int m = 0; m < MB; ++m) {
    float inv = 1.0f;
    if (OP == OP_NORM || OP == OP_GATED) inv = rsqrtf(warp_sum(ss[m]) / K + eps);
#pragma unroll
    for (int j = 0; j < W; ++j) acc[m][j] = warp_sum(acc[m][j]) * inv;
    if (lane == 0 && m < M) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int n = n0 + r;
        if (n >= N) break;
        float v = acc[m][r];
        if (OP == OP_GATED) v = silu(v) * acc[m][R + r];
        if (OP == OP_RES) v += __half2float(res[(size_t)m * N + n]);
        store1(out + (size_t)m * N + n, v);
      }
    }
  }
}

// fp16 weights W[N(*2 for OP_GATED), K]; K % 8 == 0.
template <int MB, int R, int U, int OP, typename OutT>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_f16_kernel(const half* __restrict__ x, const half* __restrict__ g, const half* __restrict__ w,
                    const half* __restrict__ res, OutT* __restrict__ out, int M, int N, int K, float eps) {
  constexpr int W = (OP == OP_GATED ? 2 : 1) * R;
  constexpr bool NORM = OP == OP_NORM || OP == OP_GATED;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n0 = (blockIdx.x * GEMV_WARPS + warp) * R;
  if (n0 >= N) return;
  const half* rows[W];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int n = min(n0 + r, N - 1);
    rows[r] = w + (size_t)n * K;
    if (OP == OP_GATED) rows[R + r] = w + (size_t)(n + N) * K;
  }
  float acc[MB][W], ss[MB];
#pragma unroll
  for (int m = 0; m < MB; ++m) {
    ss[m] = 0.f;
#pragma unroll
    for (int j = 0; j < W; ++j) acc[m][j] = 0.f;
  }
  for (int kb = lane * 8; kb < K; kb += 256 * U) {
    uint4 wv[U][W];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = kb + u * 256;
#pragma unroll
      for (int j = 0; j < W; ++j)
        if (k < K) wv[u][j] = load_stream(rows[j] + k);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int k = kb + u * 256;
      if (k >= K) break;
      float gv[8];
      if (NORM) unpack8(load_cached(g + k), gv);
      float wf[W][8];
#pragma unroll
      for (int j = 0; j < W; ++j) unpack8(wv[u][j], wf[j]);
#pragma unroll
      for (int m = 0; m < MB; ++m) {
        if (m >= M) break;
        float xv[8];
        unpack8(load_cached(x + (size_t)m * K + k), xv);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          if (NORM) {
            ss[m] = fmaf(xv[i], xv[i], ss[m]);
            xv[i] *= gv[i];
          }
#pragma unroll
          for (int j = 0; j < W; ++j) acc[m][j] = fmaf(xv[i], wf[j][i], acc[m][j]);
        }
      }
    }
  }
  gemv_epilogue<MB, R, OP, OutT>(acc, ss, res, out, M, N, K, n0, eps, lane);
}

// int4 weights: qw[N, K/8] (eight 4-bit values per word, element k at bits 4*(k%8)), one fp16
// scale and minimum per group of 32: w = q * scale + min (GGUF Q4_1). K % 32 == 0.
// sum_k x_k w_k over a group = scale * sum_k x_k q_k + min * sum_k x_k, so the minimum costs one
// multiply per group and the nibbles are turned into floats exactly (2^23 + q trick).
template <int MB, int R, int U, int OP, typename OutT>
__global__ void __launch_bounds__(GEMV_WARPS * 32)
    gemv_q4_kernel(const half* __restrict__ x, const half* __restrict__ g, const uint32_t* __restrict__ qw,
                   const half* __restrict__ qs, const half* __restrict__ qm, const half* __restrict__ res,
                   OutT* __restrict__ out, int M, int N, int K, float eps) {
  constexpr int W = (OP == OP_GATED ? 2 : 1) * R;
  constexpr bool NORM = OP == OP_NORM || OP == OP_GATED;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n0 = (blockIdx.x * GEMV_WARPS + warp) * R;
  if (n0 >= N) return;
  const int groups = K / 32;
  int row_index[W];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int n = min(n0 + r, N - 1);
    row_index[r] = n;
    if (OP == OP_GATED) row_index[R + r] = n + N;
  }
  float acc[MB][W], ss[MB];
#pragma unroll
  for (int m = 0; m < MB; ++m) {
    ss[m] = 0.f;
#pragma unroll
    for (int j = 0; j < W; ++j) acc[m][j] = 0.f;
  }
  for (int gb = lane; gb < groups; gb += 32 * U) {
    uint4 wv[U][W];
    float sc[U][W], mn[U][W];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int gi = gb + u * 32;
#pragma unroll
      for (int j = 0; j < W; ++j) {
        if (gi < groups) {
          const size_t row = (size_t)row_index[j];
          wv[u][j] = load_stream(qw + row * (K / 8) + gi * 4);
          sc[u][j] = __half2float(qs[row * groups + gi]);
          mn[u][j] = __half2float(qm[row * groups + gi]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int gi = gb + u * 32;
      if (gi >= groups) break;
      const int k0 = gi * 32;
      float dot[MB][W], sx[MB];
#pragma unroll
      for (int m = 0; m < MB; ++m) {
        sx[m] = 0.f;
#pragma unroll
        for (int j = 0; j < W; ++j) dot[m][j] = 0.f;
      }
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float xs[MB][8];
        float gv[8];
        if (NORM) unpack8(load_cached(g + k0 + c * 8), gv);
#pragma unroll
        for (int m = 0; m < MB; ++m) {
          if (m < M) {
            unpack8(load_cached(x + (size_t)m * K + k0 + c * 8), xs[m]);
          } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) xs[m][i] = 0.f;
          }
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            if (NORM) {
              ss[m] = fmaf(xs[m][i], xs[m][i], ss[m]);
              xs[m][i] *= gv[i];
            }
            sx[m] += xs[m][i];
          }
        }
#pragma unroll
        for (int j = 0; j < W; ++j) {
          const uint32_t word = c == 0 ? wv[u][j].x : c == 1 ? wv[u][j].y : c == 2 ? wv[u][j].z : wv[u][j].w;
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            const float q = __uint_as_float(((word >> (4 * i)) & 0xFu) | 0x4B000000u) - 8388608.0f;
#pragma unroll
            for (int m = 0; m < MB; ++m) dot[m][j] = fmaf(xs[m][i], q, dot[m][j]);
          }
        }
      }
#pragma unroll
      for (int m = 0; m < MB; ++m)
#pragma unroll
        for (int j = 0; j < W; ++j) acc[m][j] += sc[u][j] * dot[m][j] + mn[u][j] * sx[m];
    }
  }
  gemv_epilogue<MB, R, OP, OutT>(acc, ss, res, out, M, N, K, n0, eps, lane);
}

}  // namespace ferrum
