// The small kernels of the many-row (prefill) path, where the GEMM cannot absorb them:
// RMSNorm, and int4 -> fp16 dequantization into a scratch buffer.
#pragma once
#include "common.cuh"

namespace ferrum {

// y[m, :] = x[m, :] * rsqrt(mean(x[m, :]^2) + eps) * g; one block per row, K % 8 == 0.
__global__ void __launch_bounds__(256)
    rmsnorm_kernel(const half* __restrict__ x, const half* __restrict__ g, half* __restrict__ y, int K, float eps) {
  const size_t base = (size_t)blockIdx.x * K;
  __shared__ float partial[8];
  float ss = 0.f;
  for (int k = threadIdx.x * 8; k < K; k += 256 * 8) {
    float v[8];
    unpack8(load_cached(x + base + k), v);
#pragma unroll
    for (int i = 0; i < 8; ++i) ss = fmaf(v[i], v[i], ss);
  }
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < 8; ++i) total += partial[i];
  const float inv = rsqrtf(total / K + eps);
  for (int k = threadIdx.x * 8; k < K; k += 256 * 8) {
    float v[8], gv[8];
    unpack8(load_cached(x + base + k), v);
    unpack8(load_cached(g + k), gv);
    uint4 o;
    o.x = f2h2(v[0] * inv * gv[0], v[1] * inv * gv[1]);
    o.y = f2h2(v[2] * inv * gv[2], v[3] * inv * gv[3]);
    o.z = f2h2(v[4] * inv * gv[4], v[5] * inv * gv[5]);
    o.w = f2h2(v[6] * inv * gv[6], v[7] * inv * gv[7]);
    *reinterpret_cast<uint4*>(y + base + k) = o;
  }
}

// w[n, k] = q * scale + min in fp16, eight values (one word) per thread.
__global__ void dequant_q4_kernel(const uint32_t* __restrict__ qw, const half* __restrict__ qs,
                                  const half* __restrict__ qm, half* __restrict__ w, int N, int K) {
  const size_t words = (size_t)N * K / 8;
  for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < words; p += (size_t)gridDim.x * blockDim.x) {
    const size_t n = p / (K / 8), k = (p % (K / 8)) * 8;
    const size_t gidx = n * (K / 32) + k / 32;
    const float s = __half2float(qs[gidx]), mn = __half2float(qm[gidx]);
    const uint32_t word = qw[p];
    float v[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = (float)((word >> (4 * i)) & 0xFu) * s + mn;
    uint4 o;
    o.x = f2h2(v[0], v[1]);
    o.y = f2h2(v[2], v[3]);
    o.z = f2h2(v[4], v[5]);
    o.w = f2h2(v[6], v[7]);
    *reinterpret_cast<uint4*>(w + n * K + k) = o;
  }
}

}  // namespace ferrum
