// Causal self-attention of the tokens a prefill appends (TVM's "ragged prefill" slot of the paged
// KV cache), FlashAttention-2 style on tensor cores.
//
// TVM 0.27's TIR prefill kernels run on CUDA cores; at 2048 tokens they take most of an 8B
// model's prefill. Here each block owns 64 query rows of one head (16 per warp): Q stays in
// registers as mma fragments, K/V tiles of 64 keys stream through double-buffered shared memory
// (cp.async, XOR-swizzled 16-byte chunks), S = QK^T and O += PV run as mma.sync m16n8k16 with an
// online softmax in between, and the probabilities go from the S accumulators straight into A
// fragments. Scores are in log2 units (scaled by sm_scale * log2 e) and the returned LSE is
// m + log2(sum), TVM's convention, so TVM's merge kernel can combine it with attention over
// cached pages. Sequences are ragged: qo_indptr / kv_indptr give each one's rows; a query row r
// sees keys k <= r + (kv_len - q_len).
#pragma once
#include "common.cuh"

namespace ferrum {

// 4 warps x 16 query rows: on the H100, 128-row tiles (8 warps) measured slower (0.246 vs 0.213 ms
// for 2048 tokens of the 8B shape), one block per SM instead of two
constexpr int ATTN_BM = 64, ATTN_BN = 64, ATTN_THREADS = 128;

template <int D>
struct AttnSmem {
  static constexpr int kChunks = D / 8;
  static constexpr int kBytes = (ATTN_BM + 4 * ATTN_BN) * D * 2;  // Q + two K and two V tiles
  __device__ static __forceinline__ int at(int row, int chunk) { return row * D + ((chunk ^ (row & 7)) * 8); }
};

template <int D>
__global__ void __launch_bounds__(ATTN_THREADS)
    attention_prefill_kernel(const half* __restrict__ q, const int* __restrict__ qo_indptr, const half* __restrict__ k,
                             const half* __restrict__ v, const int* __restrict__ kv_indptr, half* __restrict__ out,
                             float* __restrict__ lse, int batch, int h_q, int h_kv, int causal, float scale_log2) {
  using S = AttnSmem<D>;
  constexpr int CH = S::kChunks, KD = D / 16, ND = D / 8;
  static_assert(CH >= 8, "head dim must be at least 64");
  extern __shared__ uint4 smem_raw[];
  half* Qs = reinterpret_cast<half*>(smem_raw);
  half* Ks = Qs + ATTN_BM * D;
  half* Vs = Ks + 2 * ATTN_BN * D;

  // which sequence and which 64-row tile of it
  int tile = blockIdx.x, seq = 0;
  for (; seq < batch; ++seq) {
    const int tiles = (qo_indptr[seq + 1] - qo_indptr[seq] + ATTN_BM - 1) / ATTN_BM;
    if (tile < tiles) break;
    tile -= tiles;
  }
  if (seq >= batch) return;
  const int head = blockIdx.y, kv_head = head / (h_q / h_kv);
  const int q_start = qo_indptr[seq], q_len = qo_indptr[seq + 1] - q_start;
  const int kv_start = kv_indptr[seq], kv_len = kv_indptr[seq + 1] - kv_start;
  const int q0 = tile * ATTN_BM, shift = kv_len - q_len;
  const int kv_end = causal ? min(kv_len, q0 + ATTN_BM + shift) : kv_len;
  const int n_tiles = (kv_end + ATTN_BN - 1) / ATTN_BN;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const size_t q_stride = (size_t)h_q * D, kv_stride = (size_t)h_kv * D;

  auto load_rows = [&](half* dst, const half* base, size_t stride, int first, int count, int limit) {
#pragma unroll
    for (int it = 0; it < count * CH / ATTN_THREADS; ++it) {
      const int i = tid + it * ATTN_THREADS, r = i / CH, c = i % CH;
      const int row = first + r;
      cp_async16(dst + S::at(r, c), base + (size_t)min(row, limit - 1) * stride + c * 8, row < limit);
    }
  };
  const half* kbase = k + (size_t)kv_start * kv_stride + (size_t)kv_head * D;
  const half* vbase = v + (size_t)kv_start * kv_stride + (size_t)kv_head * D;
  load_rows(Qs, q + (size_t)q_start * q_stride + (size_t)head * D, q_stride, q0, ATTN_BM, q_len);
  if (n_tiles > 0) {
    load_rows(Ks, kbase, kv_stride, 0, ATTN_BN, kv_len);
    load_rows(Vs, vbase, kv_stride, 0, ATTN_BN, kv_len);
  }
  cp_async_commit();

  uint32_t qf[KD][4];
  float o[ND][4];
#pragma unroll
  for (int i = 0; i < ND; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[i][e] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  const int g = lane >> 2, cq = lane & 3;
  const int row_lo = q0 + warp * 16 + g;  // this thread's rows: row_lo and row_lo + 8 (within the sequence)

  for (int j = 0; j < n_tiles; ++j) {
    const int buf = j & 1;
    if (j + 1 < n_tiles) {
      load_rows(Ks + (buf ^ 1) * ATTN_BN * D, kbase, kv_stride, (j + 1) * ATTN_BN, ATTN_BN, kv_len);
      load_rows(Vs + (buf ^ 1) * ATTN_BN * D, vbase, kv_stride, (j + 1) * ATTN_BN, ATTN_BN, kv_len);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    if (j == 0) {
#pragma unroll
      for (int kk = 0; kk < KD; ++kk) {
        const int row = warp * 16 + (lane & 15);
        ldmatrix_x4(qf[kk], Qs + S::at(row, kk * 2 + (lane >> 4)));
      }
    }
    const half* ks = Ks + buf * ATTN_BN * D;
    const half* vs = Vs + buf * ATTN_BN * D;

    float s[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[i][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KD; ++kk) {
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        uint32_t r[4];
        const int row = p * 16 + ((lane >> 4) << 3) + (lane & 7);
        ldmatrix_x4(r, ks + S::at(row, kk * 2 + ((lane >> 3) & 1)));
        mma_16816(s[2 * p], qf[kk], r);
        mma_16816(s[2 * p + 1], qf[kk], r + 2);
      }
    }
    // scale, mask, online softmax (two rows per thread, four threads per row)
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = j * ATTN_BN + nt * 8 + cq * 2 + (e & 1);
        const int row = row_lo + (e >> 1) * 8;
        const bool ok = col < kv_len && (!causal || col <= row + shift);
        s[nt][e] = ok ? s[nt][e] * scale_log2 : -INFINITY;
        tile_max[e >> 1] = fmaxf(tile_max[e >> 1], s[nt][e]);
      }
    }
    float alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
      const float m_new = fmaxf(m_run[h], tile_max[h]);
      // a row with nothing visible yet keeps m = -inf: avoid (-inf) - (-inf)
      alpha[h] = m_new == -INFINITY ? 1.f : exp2f(m_run[h] - m_new);
      m_run[h] = m_new;
      l_run[h] *= alpha[h];
    }
#pragma unroll
    for (int i = 0; i < ND; ++i) {
      o[i][0] *= alpha[0];
      o[i][1] *= alpha[0];
      o[i][2] *= alpha[1];
      o[i][3] *= alpha[1];
    }
    uint32_t pf[4][4];
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      float p[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float m = m_run[e >> 1];
        p[e] = m == -INFINITY ? 0.f : exp2f(s[nt][e] - m);
        l_run[e >> 1] += p[e];
      }
      pf[nt / 2][(nt & 1) * 2 + 0] = f2h2(p[0], p[1]);
      pf[nt / 2][(nt & 1) * 2 + 1] = f2h2(p[2], p[3]);
    }
    // O += P V  (A fragment order: a0 rows g / keys 0-7, a1 rows g+8 / keys 0-7, a2 rows g / keys 8-15, a3 rows g+8 / keys 8-15)
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const uint32_t a[4] = {pf[t][0], pf[t][1], pf[t][2], pf[t][3]};
#pragma unroll
      for (int dp = 0; dp < ND / 2; ++dp) {
        uint32_t r[4];
        const int row = t * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        ldmatrix_x4_trans(r, vs + S::at(row, dp * 2 + (lane >> 4)));
        mma_16816(o[2 * dp], a, r);
        mma_16816(o[2 * dp + 1], a, r + 2);
      }
    }
    __syncthreads();  // the buffer is refilled by the next iteration's prefetch
  }
  cp_async_wait<0>();

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 1);
    l_run[h] += __shfl_xor_sync(0xffffffffu, l_run[h], 2);
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = row_lo + h * 8;
    if (row >= q_len) continue;
    const float inv = l_run[h] > 0.f ? 1.f / l_run[h] : 0.f;
    half* orow = out + (size_t)(q_start + row) * q_stride + (size_t)head * D;
#pragma unroll
    for (int nt = 0; nt < ND; ++nt) store2(orow + nt * 8 + cq * 2, o[nt][2 * h] * inv, o[nt][2 * h + 1] * inv);
    if (cq == 0) lse[(size_t)(q_start + row) * h_q + head] = l_run[h] > 0.f ? m_run[h] + log2f(l_run[h]) : -INFINITY;
  }
}

}  // namespace ferrum
