// Attention of one new token per sequence over its paged KV cache (the paged KV cache's decode
// function, TVM's batch_decode_paged_kv calling convention). Decode attention at short contexts
// is a chain of dependent memory round trips (page table, then K, then V), so the work is laid
// out to have as few rounds as possible: one block per (sequence, query head), each warp takes 32
// keys per round with one key per lane (the whole dot product in the lane: 16-byte K loads all
// in flight, q read from shared memory), one warp max/sum for the softmax, then P.V with lanes
// owning head_dim / 32 dimensions and the round's 32 V rows loaded together. Warps merge their
// softmax states in shared memory. Scores in log2 units; lse = m + log2(sum), TVM's convention.
// pages: [num_pages, 2 (K, V), h_kv, page_size, d]; a sequence's keys are in
// page_values[page_indptr[b] ..] and its last page holds last_len[b] of them.
#pragma once
#include <type_traits>

#include "common.cuh"

namespace ferrum {

constexpr int DECODE_WARPS = 4;

template <int D>
__global__ void __launch_bounds__(DECODE_WARPS * 32)
    attention_decode_kernel(const half* __restrict__ q, const half* __restrict__ pages,
                            const int* __restrict__ page_indptr, const int* __restrict__ page_values,
                            const int* __restrict__ last_len, half* __restrict__ out, float* __restrict__ lse,
                            int h_q, int h_kv, int page_size, float scale_log2) {
  constexpr int E = D / 32, CH = D / 8;  // dims per lane in P.V; 16-byte chunks per K row
  const int b = blockIdx.x, hq = blockIdx.y, kvh = hq / (h_q / h_kv);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int first_page = page_indptr[b], n_pages = page_indptr[b + 1] - first_page;
  const int kv_len = n_pages > 0 ? (n_pages - 1) * page_size + last_len[b] : 0;
  const size_t head_stride = (size_t)page_size * D, kv_stride = (size_t)h_kv * head_stride;

  __shared__ float qs[D];
  for (int i = threadIdx.x; i < D; i += DECODE_WARPS * 32)
    qs[i] = __half2float(q[((size_t)b * h_q + hq) * D + i]) * scale_log2;
  __syncthreads();

  float m = -INFINITY, l = 0.f, acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) acc[e] = 0.f;

  for (int base = warp * 32; base < kv_len; base += DECODE_WARPS * 32) {
    const int pos = base + lane;
    const bool valid = pos < kv_len;
    const half* krow = pages;
    if (valid) {
      const int page = page_values[first_page + pos / page_size];
      krow = pages + (size_t)page * 2 * kv_stride + kvh * head_stride + (pos % page_size) * D;
    }
    // QK: the lane's whole key
    uint4 kv[CH];
#pragma unroll
    for (int c = 0; c < CH; ++c) kv[c] = valid ? load_cached(krow + c * 8) : make_uint4(0, 0, 0, 0);
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < CH; ++c) {
      float kf[8];
      unpack8(kv[c], kf);
#pragma unroll
      for (int i = 0; i < 8; ++i) s = fmaf(qs[c * 8 + i], kf[i], s);
    }
    s = valid ? s : -INFINITY;
    const float m_new = fmaxf(m, warp_max(s));  // the round's first key is always valid
    const float alpha = exp2f(m - m_new);
    const float p = valid ? exp2f(s - m_new) : 0.f;
    l = l * alpha + warp_sum(p);
    m = m_new;
    // P.V: lanes own dims lane*E .. lane*E+E-1; the round's V rows loaded together
    const int keys = min(32, kv_len - base);
    using Vec = typename std::conditional<E == 4, uint2, uint32_t>::type;  // this lane's E halves of a V row
    Vec vh[32];
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const half* vrow = reinterpret_cast<const half*>(__shfl_sync(0xffffffffu, reinterpret_cast<uintptr_t>(krow), j));
      vh[j] = j < keys ? *reinterpret_cast<const Vec*>(vrow + kv_stride + lane * E) : Vec{};
    }
#pragma unroll
    for (int e = 0; e < E; ++e) acc[e] *= alpha;
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      const float pj = __shfl_sync(0xffffffffu, p, j);
      const uint32_t* w = reinterpret_cast<const uint32_t*>(&vh[j]);
#pragma unroll
      for (int e = 0; e < E / 2; ++e) {
        const float2 f = h2f(w[e]);
        acc[2 * e] = fmaf(pj, f.x, acc[2 * e]);
        acc[2 * e + 1] = fmaf(pj, f.y, acc[2 * e + 1]);
      }
    }
  }

  __shared__ float sm_m[DECODE_WARPS], sm_l[DECODE_WARPS], sm_acc[DECODE_WARPS][D];
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int e = 0; e < E; ++e) sm_acc[warp][lane * E + e] = acc[e];
  __syncthreads();
  float top = -INFINITY;
#pragma unroll
  for (int w = 0; w < DECODE_WARPS; ++w) top = fmaxf(top, sm_m[w]);
  float total = 0.f;
#pragma unroll
  for (int w = 0; w < DECODE_WARPS; ++w) total += sm_m[w] == -INFINITY ? 0.f : sm_l[w] * exp2f(sm_m[w] - top);
  for (int dim = threadIdx.x; dim < D; dim += DECODE_WARPS * 32) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < DECODE_WARPS; ++w)
      if (sm_m[w] != -INFINITY) o += sm_acc[w][dim] * exp2f(sm_m[w] - top);
    out[((size_t)b * h_q + hq) * D + dim] = __float2half_rn(total > 0.f ? o / total : 0.f);
  }
  if (threadIdx.x == 0) lse[(size_t)b * h_q + hq] = total > 0.f ? top + log2f(total) : -INFINITY;
}

}  // namespace ferrum
