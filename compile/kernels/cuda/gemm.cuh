// Tensor-core GEMM for more than 8 activation rows: C[M, N] = A[M, K] * B[N, K]^T (+ R[M, N]).
//
// A is the activations (row-major), B the weights in their stored (out, in) layout, so both
// operands are K-contiguous and feed ldmatrix without transposes. mma.sync m16n8k16 with float32
// accumulators, a STAGES-deep cp.async pipeline, and an XOR swizzle of the 16-byte chunks in shared
// memory that keeps every ldmatrix phase free of bank conflicts. Tiles are walked in groups of
// GROUP_M row tiles so that blocks running together share weight tiles through L2.
// Requires K % BK == 0 and N % 8 == 0; rows and columns past M and N are zero-filled and not stored.
// GATED (SwiGLU): B holds [gate; up] (2N rows) and C is silu(A Bg^T) * (A Bu^T), N wide. A tile's
// BN shared-memory rows interleave gate and up rows in blocks of 8, so each warp's n8 tiles 2t and
// 2t+1 hold the gate and up values of the same 8 output columns in the same registers.
#pragma once
#include "common.cuh"

namespace ferrum {

constexpr int GEMM_GROUP_M = 16;

template <int BM, int BN, int BK, int WM, int WN, int STAGES>
struct GemmShape {
  static constexpr int kThreads = WM * WN * 32;
  static constexpr int kChunks = BK / 8;  // 16-byte chunks per shared-memory row
  static constexpr int kSwizzleDiv = kChunks >= 8 ? 1 : 8 / kChunks;
  static constexpr int TM = BM / WM, TN = BN / WN;
  static constexpr int MT = TM / 16, NT = TN / 8;
  static constexpr int kSmemBytes = STAGES * (BM + BN) * BK * 2;
  static_assert(TM % 16 == 0 && TN % 16 == 0, "warp tile must be a multiple of 16x16");
  static_assert(BK % 16 == 0 && kChunks <= 8, "BK must be 16..64");
  __device__ static __forceinline__ int swizzle(int row, int chunk) {
    return chunk ^ ((row / kSwizzleDiv) % kChunks);
  }
};

template <int BM, int BN, int BK, int WM, int WN, int STAGES, typename OutT, bool RES, bool GATED = false>
__global__ void __launch_bounds__(WM * WN * 32)
    gemm_f16_kernel(const half* __restrict__ A, const half* __restrict__ B, const half* __restrict__ Rsd,
                    OutT* __restrict__ C, int M, int N, int K) {
  using S = GemmShape<BM, BN, BK, WM, WN, STAGES>;
  constexpr int T = S::kThreads, CH = S::kChunks, MT = S::MT, NT = S::NT;
  extern __shared__ uint4 smem_raw[];
  half* As = reinterpret_cast<half*>(smem_raw);
  half* Bs = As + STAGES * BM * BK;

  // grouped tile order (row tiles fastest inside a group of GROUP_M)
  constexpr int OUT_BN = GATED ? BN / 2 : BN;  // output columns per tile
  const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + OUT_BN - 1) / OUT_BN;
  const int per_group = GEMM_GROUP_M * tiles_n;
  const int pid = blockIdx.x;
  const int first_m = (pid / per_group) * GEMM_GROUP_M;
  const int group_rows = min(tiles_m - first_m, GEMM_GROUP_M);
  const int tile_m = first_m + (pid % per_group) % group_rows;
  const int tile_n = (pid % per_group) / group_rows;
  const int m0 = tile_m * BM, n0 = tile_n * OUT_BN;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wm = warp / WN, wn = warp % WN;
  pdl_wait();

  auto load_tile = [&](int stage, int kt) {
    const int k0 = kt * BK;
    half* as = As + stage * BM * BK;
    half* bs = Bs + stage * BN * BK;
#pragma unroll
    for (int it = 0; it < (BM * CH + T - 1) / T; ++it) {
      const int i = tid + it * T;
      if (BM * CH % T != 0 && i >= BM * CH) break;
      const int r = i / CH, c = i % CH, gr = m0 + r;
      cp_async16(as + r * BK + S::swizzle(r, c) * 8, A + (size_t)min(gr, M - 1) * K + k0 + c * 8, gr < M);
    }
#pragma unroll
    for (int it = 0; it < (BN * CH + T - 1) / T; ++it) {
      const int i = tid + it * T;
      if (BN * CH % T != 0 && i >= BN * CH) break;
      const int r = i / CH, c = i % CH;
      // GATED: rows 16p..16p+7 are gate rows n0+8p.., rows 16p+8..16p+15 the matching up rows
      const int col = GATED ? n0 + (r >> 4) * 8 + (r & 7) : n0 + r;
      const int gr = GATED && (r & 8) ? N + min(col, N - 1) : min(col, N - 1);
      cp_async16(bs + r * BK + S::swizzle(r, c) * 8, B + (size_t)gr * K + k0 + c * 8, col < N);
    }
  };

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  const int KT = K / BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < KT) load_tile(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < KT; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int pf = kt + STAGES - 1;
    if (pf < KT) load_tile(pf % STAGES, pf);
    cp_async_commit();
    const half* as = As + (kt % STAGES) * BM * BK;
    const half* bs = Bs + (kt % STAGES) * BN * BK;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t af[MT][4], bf[NT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int row = wm * S::TM + mt * 16 + (lane & 15);
        const int c = kk * 2 + (lane >> 4);
        ldmatrix_x4(af[mt], as + row * BK + S::swizzle(row, c) * 8);
      }
#pragma unroll
      for (int p = 0; p < NT / 2; ++p) {
        uint32_t r[4];
        const int row = wn * S::TN + p * 16 + ((lane >> 4) << 3) + (lane & 7);
        const int c = kk * 2 + ((lane >> 3) & 1);
        ldmatrix_x4(r, bs + row * BK + S::swizzle(row, c) * 8);
        bf[2 * p][0] = r[0];
        bf[2 * p][1] = r[1];
        bf[2 * p + 1][0] = r[2];
        bf[2 * p + 1][1] = r[3];
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_16816(acc[mt][nt], af[mt], bf[nt]);
    }
  }
  cp_async_wait<0>();
  pdl_trigger();

  const int gq = lane >> 2, cq = lane & 3;
  if constexpr (GATED) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int t = 0; t < NT / 2; ++t) {
        const int col = n0 + (wn * S::TN) / 2 + t * 8 + cq * 2;
        if (col >= N) continue;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = m0 + wm * S::TM + mt * 16 + gq + h * 8;
          if (row >= M) continue;
          const float* gate = acc[mt][2 * t];
          const float* up = acc[mt][2 * t + 1];
          store2(C + (size_t)row * N + col, silu(gate[2 * h]) * up[2 * h], silu(gate[2 * h + 1]) * up[2 * h + 1]);
        }
      }
    }
  } else {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int col = n0 + wn * S::TN + nt * 8 + cq * 2;
        if (col >= N) continue;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = m0 + wm * S::TM + mt * 16 + gq + h * 8;
          if (row >= M) continue;
          float v0 = acc[mt][nt][2 * h], v1 = acc[mt][nt][2 * h + 1];
          if (RES) {
            const float2 r = h2f(*reinterpret_cast<const uint32_t*>(Rsd + (size_t)row * N + col));
            v0 += r.x;
            v1 += r.y;
          }
          store2(C + (size_t)row * N + col, v0, v1);
        }
      }
    }
  }
}

}  // namespace ferrum
