// Token sampling on the GPU, one block per sequence, so only token ids cross to the host.
//
// Same order of operations as the host sampler (runtime/sampling.py): greedy argmax when the
// temperature is 0, else temperature -> top-k -> min-p -> top-p -> draw with a uniform number that
// the host takes from the sequence's own seeded generator. Thresholds are found exactly by a
// bitwise search over the float values' order-preserving integer keys (32 counting/summing passes
// over the row), so no sort is needed; the draw walks the kept mass in vocabulary order, as the
// host's cumulative sum does.
//
// An optional grammar bitmask (int32 words [rows, ceil(V / 32)] in llguidance's layout: bit t % 32
// of word t / 32 set = token t allowed) is applied first: an excluded token reads as -inf in every
// pass, as the host's apply_mask writes it, so greedy is the argmax of the masked row and every
// filter and the draw see only allowed tokens. Bits past V in the last word are never read.
#pragma once
#include "common.cuh"

namespace ferrum {

constexpr int SAMPLE_THREADS = 512;

__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t b = __float_as_uint(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

template <typename T>
__device__ __forceinline__ T block_sum(T v, T* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T total = 0;
#pragma unroll
  for (int i = 0; i < SAMPLE_THREADS / 32; ++i) total += shared[i];
  return total;
}

// One row's logits as the sampler sees them: masked-out tokens at -inf (no mask: the row as is).
struct MaskedRow {
  const float* __restrict__ x;
  const uint32_t* __restrict__ mask;  // nullptr: every token allowed
  __device__ __forceinline__ float operator[](int i) const {
    const float v = x[i];
    return (mask == nullptr || ((mask[i >> 5] >> (i & 31)) & 1u)) ? v : -INFINITY;
  }
};

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(const float* __restrict__ logits, const float* __restrict__ params,
                  const uint32_t* __restrict__ masks, int* __restrict__ out, int V) {
  const int row = blockIdx.x, tid = threadIdx.x;
  const MaskedRow x{logits + (size_t)row * V, masks == nullptr ? nullptr : masks + (size_t)row * ((V + 31) / 32)};
  const float* prm = params + (size_t)row * kSampleParams;
  __shared__ float fshared[SAMPLE_THREADS / 32];
  __shared__ unsigned ushared[SAMPLE_THREADS / 32];
  __shared__ float best_v[SAMPLE_THREADS / 32];
  __shared__ int best_i[SAMPLE_THREADS / 32];

  // 1. argmax (first index among equal maxima, like numpy)
  float bv = -INFINITY;
  int bi = V;
  for (int i = tid; i < V; i += SAMPLE_THREADS) {
    const float v = x[i];
    if (v > bv || (v == bv && i < bi)) { bv = v; bi = i; }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
  }
  if ((tid & 31) == 0) { best_v[tid >> 5] = bv; best_i[tid >> 5] = bi; }
  __syncthreads();
  bv = best_v[0];
  bi = best_i[0];
  for (int w = 1; w < SAMPLE_THREADS / 32; ++w)
    if (best_v[w] > bv || (best_v[w] == bv && best_i[w] < bi)) { bv = best_v[w]; bi = best_i[w]; }
  const float temp = prm[kSampleTemperature];
  if (!(temp > 0.f)) {
    if (tid == 0) out[row] = bi;
    return;
  }
  const float inv_t = 1.0f / temp, top = bv * inv_t;

  // 2. top-k: the k-th largest scaled logit, exactly
  const int k = static_cast<int>(prm[kSampleTopK]);
  uint32_t kth_key = 0;
  if (k > 0 && k < V) {
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t cand = kth_key | (1u << bit);
      unsigned count = 0;
      for (int i = tid; i < V; i += SAMPLE_THREADS) count += order_key(x[i] * inv_t) >= cand;
      if (block_sum(count, ushared) >= (unsigned)k) kth_key = cand;
    }
  }
  // 3. min-p keeps e >= min_p * max(e) where max(e) = 1
  const float mp = prm[kSampleMinP];
  auto weight = [&](int i) -> float {
    const float s = x[i] * inv_t;
    if (order_key(s) < kth_key) return 0.f;
    const float e = __expf(s - top);
    return e >= mp ? e : 0.f;
  };
  float mass = 0.f;
  for (int i = tid; i < V; i += SAMPLE_THREADS) mass += weight(i);
  mass = block_sum(mass, fshared);

  // 4. top-p: the smallest weight of the shortest prefix (by weight) holding top_p of the mass
  const float p = prm[kSampleTopP];
  uint32_t p_key = 0;
  if (p < 1.f) {
    const float need = p * mass;
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t cand = p_key | (1u << bit);
      float s = 0.f;
      for (int i = tid; i < V; i += SAMPLE_THREADS) {
        const float e = weight(i);
        if (__float_as_uint(e) >= cand) s += e;
      }
      if (block_sum(s, fshared) >= need) p_key = cand;
    }
  }
  auto kept = [&](int i) -> float {
    const float e = weight(i);
    return __float_as_uint(e) >= p_key ? e : 0.f;
  };

  // 5. draw: each thread owns a contiguous slice; exclusive scan of slice masses, then a walk
  const int per = (V + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
  const int lo = min(tid * per, V), hi = min(lo + per, V);
  float mine = 0.f;
  int last_kept = -1;
  for (int i = lo; i < hi; ++i) {
    const float e = kept(i);
    mine += e;
    if (e > 0.f) last_kept = i;
  }
  __shared__ float prefix[SAMPLE_THREADS];
  __shared__ int last_index[SAMPLE_THREADS];
  prefix[tid] = mine;
  last_index[tid] = last_kept;
  __syncthreads();
  if (tid == 0) {
    float run = 0.f;
    int last = bi;
    for (int t = 0; t < SAMPLE_THREADS; ++t) {
      const float m = prefix[t];
      prefix[t] = run;
      run += m;
      if (last_index[t] >= 0) last = last_index[t];
    }
    fshared[0] = run;
    best_i[0] = last;
  }
  __syncthreads();
  const float total = fshared[0];
  const float target = prm[kSampleUniform] * total;
  if (tid == 0) out[row] = best_i[0];  // target at or past the end (rounding): the last kept token
  __syncthreads();
  float run = prefix[tid];
  if (target >= run && target < run + mine) {
    int pick = last_kept;
    for (int i = lo; i < hi; ++i) {
      run += kept(i);
      if (run > target) { pick = i; break; }
    }
    out[row] = pick;
  }
}

}  // namespace ferrum
