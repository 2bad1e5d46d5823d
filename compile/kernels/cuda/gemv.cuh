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

constexpr int GEMV_WARPS = 4;

// Reduce the warp's partial sums, scale row m by post[m], apply the op's epilogue, store.
template <int MB, int R, int OP, typename OutT>
__device__ __forceinline__ void gemv_epilogue(float (&acc)[MB][(OP == OP_GATED ? 2 : 1) * R], const float (&post)[MB],
                                              const half* __restrict__ res, OutT* __restrict__ out, int M, int N,
                                              int n0, int lane) {
  constexpr int W = (OP == OP_GATED ? 2 : 1) * R;
#pragma unroll
  for (int m = 0; m < MB; ++m) {
#pragma unroll
    for (int j = 0; j < W; ++j) acc[m][j] = warp_sum(acc[m][j]) * post[m];
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
  // weights never change: fetch the first of them while the previous kernel drains
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int j = 0; j < W; ++j)
      if (lane * 8 + u * 256 < K) prefetch_l2(rows[j] + lane * 8 + u * 256);
  pdl_wait();
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
  pdl_trigger();  // the next kernel may launch once every block is past its main loop
  float post[MB];
#pragma unroll
  for (int m = 0; m < MB; ++m) post[m] = NORM ? rsqrtf(warp_sum(ss[m]) / K + eps) : 1.f;
  gemv_epilogue<MB, R, OP, OutT>(acc, post, res, out, M, N, n0, lane);
}

// int4 weights: qw[N, K/8] (eight 4-bit values per word, element k at bits 4*(k%8)), one fp16
// scale and minimum per group of 32: w = q * scale + min (GGUF Q4_1). K % 32 == 0.
// sum_k x_k w_k over a group = scale * sum_k x_k q_k + min * sum_k x_k, so the minimum costs one
// multiply per group. Inner loop in half2: one LOP3 (+ one shift) turns nibbles k and k+4 of a
// word into {1024 + q} (0x6400 is 1024 in fp16), a subtraction makes them exact small integers, and
// the activations are paired to match with one byte permute; each word's eight products are
// summed in fp16 and everything above that in float32. To keep those fp16 sums far from overflow
// even for outlier activations, rows enter already normalized (RMSNorm ops: a first pass over x
// finds each row's scale) or scaled by 1/32 (exact), undone in float32 at the end.
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
#pragma unroll
  for (int u = 0; u < U; ++u)
#pragma unroll
    for (int j = 0; j < W; ++j)
      if (lane + u * 32 < groups) prefetch_l2(qw + (size_t)row_index[j] * (K / 8) + (lane + u * 32) * 4);
  pdl_wait();
  float acc[MB][W], xscale[MB];
#pragma unroll
  for (int m = 0; m < MB; ++m) {
#pragma unroll
    for (int j = 0; j < W; ++j) acc[m][j] = 0.f;
    xscale[m] = 1.f / 32.f;
    if (NORM) {
      float ss = 0.f;
      if (m < M) {
        for (int k = lane * 8; k < K; k += 256) {
          float f[8];
          unpack8(load_cached(x + (size_t)m * K + k), f);
#pragma unroll
          for (int i = 0; i < 8; ++i) ss = fmaf(f[i], f[i], ss);
        }
      }
      xscale[m] = rsqrtf(warp_sum(ss) / K + eps);
    }
  }
  const __half2 k1024 = __float2half2_rn(1024.f);
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
        // activations of elements 8c..8c+7, paired as {x0,x4} {x1,x5} {x2,x6} {x3,x7}
        uint32_t xp[MB][4];
        uint4 gw;
        if (NORM) gw = load_cached(g + k0 + c * 8);
#pragma unroll
        for (int m = 0; m < MB; ++m) {
          uint4 xv = m < M ? load_cached(x + (size_t)m * K + k0 + c * 8) : make_uint4(0, 0, 0, 0);
          {
            float f[8], gf[8];
            unpack8(xv, f);
            if (NORM) unpack8(gw, gf);
#pragma unroll
            for (int i = 0; i < 8; ++i) f[i] *= NORM ? xscale[m] * gf[i] : xscale[m];
            xv = make_uint4(f2h2(f[0], f[1]), f2h2(f[2], f[3]), f2h2(f[4], f[5]), f2h2(f[6], f[7]));
          }
          const __half2 sum2 = __hadd2(__hadd2(*reinterpret_cast<__half2*>(&xv.x), *reinterpret_cast<__half2*>(&xv.y)),
                                       __hadd2(*reinterpret_cast<__half2*>(&xv.z), *reinterpret_cast<__half2*>(&xv.w)));
          const float2 sf = __half22float2(sum2);
          sx[m] += sf.x + sf.y;
          xp[m][0] = __byte_perm(xv.x, xv.z, 0x5410);
          xp[m][1] = __byte_perm(xv.x, xv.z, 0x7632);
          xp[m][2] = __byte_perm(xv.y, xv.w, 0x5410);
          xp[m][3] = __byte_perm(xv.y, xv.w, 0x7632);
        }
#pragma unroll
        for (int j = 0; j < W; ++j) {
          const uint32_t word = c == 0 ? wv[u][j].x : c == 1 ? wv[u][j].y : c == 2 ? wv[u][j].z : wv[u][j].w;
          __half2 q2[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const uint32_t bits = ((word >> (4 * i)) & 0x000F000Fu) | 0x64006400u;
            q2[i] = __hsub2(*reinterpret_cast<const __half2*>(&bits), k1024);
          }
#pragma unroll
          for (int m = 0; m < MB; ++m) {
            __half2 a = __hmul2(*reinterpret_cast<const __half2*>(&xp[m][0]), q2[0]);
#pragma unroll
            for (int i = 1; i < 4; ++i) a = __hfma2(*reinterpret_cast<const __half2*>(&xp[m][i]), q2[i], a);
            const float2 af = __half22float2(a);
            dot[m][j] += af.x + af.y;
          }
        }
      }
#pragma unroll
      for (int m = 0; m < MB; ++m)
#pragma unroll
        for (int j = 0; j < W; ++j) acc[m][j] += sc[u][j] * dot[m][j] + mn[u][j] * sx[m];
    }
  }
  pdl_trigger();
  float post[MB];
#pragma unroll
  for (int m = 0; m < MB; ++m) post[m] = NORM ? 1.f : 32.f;
  gemv_epilogue<MB, R, OP, OutT>(acc, post, res, out, M, N, n0, lane);
}

}  // namespace ferrum
