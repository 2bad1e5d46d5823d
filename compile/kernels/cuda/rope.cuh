// Split of the fused QKV projection into q, k, v with RoPE applied to q and k: the paged KV
// cache's "split rotary" function, with the semantics of TVM's llama_rope_with_position_map
// (rotate-half, default frequencies: freq = position * scale / theta^(2i/d)). The angle of a
// (token, pair) is the same for every head, so each thread computes one sin/cos and applies it to
// a group of heads (TVM's kernel computed it per element: 2.5 ms of an 8B model's 2048-token
// prefill); at decode sizes a thread takes one head, for parallelism.
#pragma once
#include "common.cuh"

namespace ferrum {

constexpr int ROPE_HEADS_PER_THREAD = 8;

__global__ void split_rotary_kernel(const half* __restrict__ qkv, const int* __restrict__ positions,
                                    half* __restrict__ q, half* __restrict__ k, half* __restrict__ v, int tokens,
                                    int h_q, int h_kv, int d, float theta, float scale, int apply, int per_thread) {
  const int heads = h_q + 2 * h_kv, pairs = d / 2;
  const int groups = (heads + per_thread - 1) / per_thread;
  const size_t total = (size_t)tokens * pairs * groups;
  for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += (size_t)gridDim.x * blockDim.x) {
    const int i = idx % pairs;  // consecutive threads: consecutive pairs of one head (coalesced)
    const int group = (idx / pairs) % groups;
    const size_t s = idx / ((size_t)pairs * groups);
    float sn = 0.f, cs = 1.f;
    if (apply) sincosf((float)positions[s] * scale / powf(theta, (float)(2 * i) / (float)d), &sn, &cs);
    const int h_end = min(heads, (group + 1) * per_thread);
#pragma unroll 4
    for (int h = group * per_thread; h < h_end; ++h) {
      const half* src = qkv + (s * heads + h) * d;
      const float x1 = __half2float(src[i]), x2 = __half2float(src[i + pairs]);
      half* dst;
      if (h < h_q) dst = q + (s * h_q + h) * d;
      else if (h < h_q + h_kv) dst = k + (s * h_kv + (h - h_q)) * d;
      else dst = v + (s * h_kv + (h - h_q - h_kv)) * d;
      const bool rotate = apply && h < h_q + h_kv;
      dst[i] = __float2half_rn(rotate ? cs * x1 - sn * x2 : x1);
      dst[i + pairs] = __float2half_rn(rotate ? cs * x2 + sn * x1 : x2);
    }
  }
}

}  // namespace ferrum
