// Ferrum's CUDA kernels as TVM FFI functions, linked into a CUDA artifact's model.so and called
// from the Relax graph through call_dps_packed (outputs last). Each linear-layer entry point picks
// a GEMV kernel for 1..8 activation rows and the tensor-core GEMM above, with the tile
// configuration taken from the tuning table compiled in (tuning_table.inc, generated from the
// repository's measured database) or a size heuristic when the shape was never tuned.
#include <cuda_runtime.h>
#include <dlpack/dlpack.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>

#include "gemm.cuh"
#include "gemv.cuh"
#include "pointwise.cuh"
#include "sampling.cuh"

namespace ferrum {
namespace {

// ---------------------------------------------------------------------------------------------
// Configurations and the tuning table
enum Kind { GEMV_F16 = 0, GEMV_Q4 = 1, GEMM_F16 = 2 };
// Configurations: GEMV f16 (R, U) = (1, 4) (2, 2) (4, 2); GEMV int4 (1, 2) (2, 2) (4, 1), rows per
// warp capped by q4_rows; GEMM 0..7 as listed in gemm().

struct TunedEntry {
  int sm, kind, op, n, k, m_max, config;
};
const TunedEntry kTuned[] = {
#include "tuning_table.inc"
    {-1, -1, 0, 0, 0, 0, 0}};

int device_sm() {
  static int sm = -1;
  if (sm < 0) {
    int dev = 0, major = 0, minor = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    sm = major * 10 + minor;
  }
  return sm;
}

int forced_config[3] = {-1, -1, -1};  // set by the tuning harness only

int heuristic(int kind, int m, int n) {
  if (kind == GEMV_F16 || kind == GEMV_Q4) {
    const int blocks_at_r4 = (n + 4 * GEMV_WARPS - 1) / (4 * GEMV_WARPS);
    return blocks_at_r4 >= 264 ? 2 : blocks_at_r4 >= 132 ? 1 : 0;
  }
  if (m <= 16) return 7;
  if (m <= 32) return 6;
  if (m <= 64) return 5;
  if (m <= 128) return 4;
  if (m <= 256) return 2;
  return 0;
}

int choose(int kind, int op, int m, int n, int k) {
  if (forced_config[kind] >= 0) return forced_config[kind];
  int best = -1, best_m = 1 << 30;
  const int sm = device_sm();
  for (const TunedEntry& e : kTuned) {
    if (e.sm == sm && e.kind == kind && e.op == op && e.n == n && e.k == k && e.m_max >= m && e.m_max < best_m) {
      best = e.config;
      best_m = e.m_max;
    }
  }
  return best >= 0 ? best : heuristic(kind, m, n);
}

// ---------------------------------------------------------------------------------------------
// Tensor helpers
cudaStream_t stream_of(const DLTensor* t) {
  return static_cast<cudaStream_t>(TVMFFIEnvGetStream(kDLCUDA, t->device.device_id));
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

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) TVM_FFI_THROW(RuntimeError) << what << ": " << cudaGetErrorString(err);
}

void require(bool ok, const char* what) {
  if (!ok) TVM_FFI_THROW(ValueError) << "ferrum kernels: " << what;
}

// ---------------------------------------------------------------------------------------------
// Launchers
template <int MB, int R, int U, int OP, typename OutT>
void gemv_f16_at(const half* x, const half* g, const half* w, const half* res, OutT* out, int M, int N, int K,
                 float eps, cudaStream_t s) {
  const int blocks = (N + R * GEMV_WARPS - 1) / (R * GEMV_WARPS);
  gemv_f16_kernel<MB, R, U, OP, OutT><<<blocks, GEMV_WARPS * 32, 0, s>>>(x, g, w, res, out, M, N, K, eps);
}

template <int MB, int OP, typename OutT>
void gemv_f16_cfg(int cfg, const half* x, const half* g, const half* w, const half* res, OutT* out, int M, int N,
                  int K, float eps, cudaStream_t s) {
  switch (cfg) {
    case 0: gemv_f16_at<MB, 1, 4, OP, OutT>(x, g, w, res, out, M, N, K, eps, s); break;
    case 1: gemv_f16_at<MB, 2, 2, OP, OutT>(x, g, w, res, out, M, N, K, eps, s); break;
    default: gemv_f16_at<MB, 4, 2, OP, OutT>(x, g, w, res, out, M, N, K, eps, s); break;
  }
}

template <int OP, typename OutT>
void gemv_f16(const half* x, const half* g, const half* w, const half* res, OutT* out, int M, int N, int K,
              float eps, cudaStream_t s) {
  const int cfg = choose(GEMV_F16, OP, M, N, K);
  if (M <= 1) gemv_f16_cfg<1, OP, OutT>(cfg, x, g, w, res, out, M, N, K, eps, s);
  else if (M <= 2) gemv_f16_cfg<2, OP, OutT>(cfg, x, g, w, res, out, M, N, K, eps, s);
  else if (M <= 4) gemv_f16_cfg<4, OP, OutT>(cfg, x, g, w, res, out, M, N, K, eps, s);
  else gemv_f16_cfg<8, OP, OutT>(cfg, x, g, w, res, out, M, N, K, eps, s);
  check_launch("gemv_f16");
}

// The int4 kernel keeps MB x (rows per warp) partial sums per group in registers: capped at 16
// so that no configuration spills.
constexpr int q4_rows(int MB, int R, int OP) {
  return R * MB * (OP == OP_GATED ? 2 : 1) <= 16 ? R : (16 / (MB * (OP == OP_GATED ? 2 : 1)) > 0 ? 16 / (MB * (OP == OP_GATED ? 2 : 1)) : 1);
}

template <int MB, int R, int U, int OP>
void gemv_q4_at(const half* x, const half* g, const uint32_t* qw, const half* qs, const half* qm, const half* res,
                half* out, int M, int N, int K, float eps, cudaStream_t s) {
  constexpr int RC = q4_rows(MB, R, OP);
  const int blocks = (N + RC * GEMV_WARPS - 1) / (RC * GEMV_WARPS);
  gemv_q4_kernel<MB, RC, U, OP, half><<<blocks, GEMV_WARPS * 32, 0, s>>>(x, g, qw, qs, qm, res, out, M, N, K, eps);
}

template <int MB, int OP>
void gemv_q4_cfg(int cfg, const half* x, const half* g, const uint32_t* qw, const half* qs, const half* qm,
                 const half* res, half* out, int M, int N, int K, float eps, cudaStream_t s) {
  switch (cfg) {
    case 0: gemv_q4_at<MB, 1, 2, OP>(x, g, qw, qs, qm, res, out, M, N, K, eps, s); break;
    case 1: gemv_q4_at<MB, 2, 2, OP>(x, g, qw, qs, qm, res, out, M, N, K, eps, s); break;
    default: gemv_q4_at<MB, 4, 1, OP>(x, g, qw, qs, qm, res, out, M, N, K, eps, s); break;
  }
}

template <int OP>
void gemv_q4(const half* x, const half* g, const uint32_t* qw, const half* qs, const half* qm, const half* res,
             half* out, int M, int N, int K, float eps, cudaStream_t s) {
  const int cfg = choose(GEMV_Q4, OP, M, N, K);
  if (M <= 1) gemv_q4_cfg<1, OP>(cfg, x, g, qw, qs, qm, res, out, M, N, K, eps, s);
  else if (M <= 2) gemv_q4_cfg<2, OP>(cfg, x, g, qw, qs, qm, res, out, M, N, K, eps, s);
  else if (M <= 4) gemv_q4_cfg<4, OP>(cfg, x, g, qw, qs, qm, res, out, M, N, K, eps, s);
  else gemv_q4_cfg<8, OP>(cfg, x, g, qw, qs, qm, res, out, M, N, K, eps, s);
  check_launch("gemv_q4");
}

template <int BM, int BN, int BK, int WM, int WN, int ST, typename OutT, bool RES>
void gemm_at(const half* A, const half* B, const half* R, OutT* C, int M, int N, int K, cudaStream_t s) {
  using S = GemmShape<BM, BN, BK, WM, WN, ST>;
  auto kernel = gemm_f16_kernel<BM, BN, BK, WM, WN, ST, OutT, RES>;
  static bool configured = false;
  if (!configured) {
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmemBytes);
    configured = true;
  }
  const int tiles = ((M + BM - 1) / BM) * ((N + BN - 1) / BN);
  kernel<<<tiles, S::kThreads, S::kSmemBytes, s>>>(A, B, R, C, M, N, K);
}

int gemm_bk(int cfg) { return cfg <= 2 ? 32 : 64; }

template <typename OutT, bool RES>
void gemm(const half* A, const half* B, const half* R, OutT* C, int M, int N, int K, cudaStream_t s) {
  int cfg = choose(GEMM_F16, RES ? OP_RES : OP_PLAIN, M, N, K);
  if (K % gemm_bk(cfg) != 0) cfg = 2;  // every supported K is a multiple of 32
  switch (cfg) {
    //                  BM   BN  BK WM WN ST
    case 0: gemm_at<128, 128, 32, 2, 4, 4, OutT, RES>(A, B, R, C, M, N, K, s); break;
    case 1: gemm_at<128, 256, 32, 2, 4, 3, OutT, RES>(A, B, R, C, M, N, K, s); break;
    case 2: gemm_at<64, 128, 32, 2, 2, 4, OutT, RES>(A, B, R, C, M, N, K, s); break;
    case 3: gemm_at<128, 128, 64, 2, 4, 3, OutT, RES>(A, B, R, C, M, N, K, s); break;
    case 4: gemm_at<64, 64, 64, 2, 2, 4, OutT, RES>(A, B, R, C, M, N, K, s); break;
    case 5: gemm_at<64, 32, 64, 2, 2, 4, OutT, RES>(A, B, R, C, M, N, K, s); break;
    case 6: gemm_at<32, 32, 64, 2, 2, 4, OutT, RES>(A, B, R, C, M, N, K, s); break;
    default: gemm_at<16, 32, 64, 1, 2, 4, OutT, RES>(A, B, R, C, M, N, K, s); break;
  }
  check_launch("gemm_f16");
}

void rmsnorm(const half* x, const half* g, half* y, int M, int K, float eps, cudaStream_t s) {
  rmsnorm_kernel<<<M, 256, 0, s>>>(x, g, y, K, eps);
  check_launch("rmsnorm");
}

void silu_mul(const half* gu, half* y, int M, int I, cudaStream_t s) {
  const int64_t pairs = (int64_t)M * I / 2;
  const int blocks = (int)std::min<int64_t>((pairs + 255) / 256, 4096);
  silu_mul_kernel<<<blocks, 256, 0, s>>>(gu, y, M, I);
  check_launch("silu_mul");
}

void dequant_q4(const uint32_t* qw, const half* qs, const half* qm, half* w, int N, int K, cudaStream_t s) {
  const int64_t words = (int64_t)N * K / 8;
  const int blocks = (int)std::min<int64_t>((words + 255) / 256, 8192);
  dequant_q4_kernel<<<blocks, 256, 0, s>>>(qw, qs, qm, w, N, K);
  check_launch("dequant_q4");
}

constexpr int kGemvMaxRows = 8;

// ---------------------------------------------------------------------------------------------
// Argument checking shared by the entry points
struct Linear {
  int M, N, K;
};

Linear check_linear(const DLTensor* x, const DLTensor* out, int64_t w_rows, int64_t w_cols_elems,
                    int64_t out_features) {
  require(x->device.device_type == kDLCUDA && out->device.device_type == kDLCUDA, "tensors must be on a CUDA device");
  require(is(x, kDLFloat, 16), "activations must be float16");
  require(is(out, kDLFloat, 16) || is(out, kDLFloat, 32), "output must be float16 or float32");
  const int64_t K = x->shape[x->ndim - 1];
  require(K == w_cols_elems, "activation width does not match the weight");
  require(K % 32 == 0, "the input width must be a multiple of 32");
  require(out->shape[out->ndim - 1] == out_features, "output width does not match the weight");
  require(out_features % 8 == 0, "the output width must be a multiple of 8");
  const int64_t M = numel(x) / K;
  require(numel(out) == M * out_features, "output rows do not match the input rows");
  (void)w_rows;
  return {static_cast<int>(M), static_cast<int>(out_features), static_cast<int>(K)};
}

void require_scratch(const DLTensor* scratch, int64_t halves) {
  require(is(scratch, kDLFloat, 16) && numel(scratch) >= halves, "scratch buffer too small");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points (TVM FFI, destination-passing: outputs last)

void linear_f16(DLTensor* x, DLTensor* w, DLTensor* out) {
  const Linear d = check_linear(x, out, w->shape[0], w->shape[1], w->shape[0]);
  cudaStream_t s = stream_of(x);
  const half* xp = ptr<half>(x);
  const half* wp = ptr<half>(w);
  if (is(out, kDLFloat, 32)) {
    if (d.M <= kGemvMaxRows) gemv_f16<OP_PLAIN, float>(xp, nullptr, wp, nullptr, ptr<float>(out), d.M, d.N, d.K, 0.f, s);
    else gemm<float, false>(xp, wp, nullptr, ptr<float>(out), d.M, d.N, d.K, s);
  } else {
    if (d.M <= kGemvMaxRows) gemv_f16<OP_PLAIN, half>(xp, nullptr, wp, nullptr, ptr<half>(out), d.M, d.N, d.K, 0.f, s);
    else gemm<half, false>(xp, wp, nullptr, ptr<half>(out), d.M, d.N, d.K, s);
  }
}

void linear_res_f16(DLTensor* x, DLTensor* w, DLTensor* res, DLTensor* out) {
  const Linear d = check_linear(x, out, w->shape[0], w->shape[1], w->shape[0]);
  require(is(out, kDLFloat, 16) && numel(res) == numel(out), "residual must match the float16 output");
  cudaStream_t s = stream_of(x);
  if (d.M <= kGemvMaxRows)
    gemv_f16<OP_RES, half>(ptr<half>(x), nullptr, ptr<half>(w), ptr<half>(res), ptr<half>(out), d.M, d.N, d.K, 0.f, s);
  else
    gemm<half, true>(ptr<half>(x), ptr<half>(w), ptr<half>(res), ptr<half>(out), d.M, d.N, d.K, s);
}

void norm_linear_f16(DLTensor* x, DLTensor* g, DLTensor* w, double eps, DLTensor* out, DLTensor* scratch) {
  const Linear d = check_linear(x, out, w->shape[0], w->shape[1], w->shape[0]);
  cudaStream_t s = stream_of(x);
  const half* xp = ptr<half>(x);
  const half* gp = ptr<half>(g);
  const half* wp = ptr<half>(w);
  const float e = static_cast<float>(eps);
  if (d.M <= kGemvMaxRows) {
    if (is(out, kDLFloat, 32)) gemv_f16<OP_NORM, float>(xp, gp, wp, nullptr, ptr<float>(out), d.M, d.N, d.K, e, s);
    else gemv_f16<OP_NORM, half>(xp, gp, wp, nullptr, ptr<half>(out), d.M, d.N, d.K, e, s);
    return;
  }
  require_scratch(scratch, (int64_t)d.M * d.K);
  half* normed = ptr<half>(scratch);
  rmsnorm(xp, gp, normed, d.M, d.K, e, s);
  if (is(out, kDLFloat, 32)) gemm<float, false>(normed, wp, nullptr, ptr<float>(out), d.M, d.N, d.K, s);
  else gemm<half, false>(normed, wp, nullptr, ptr<half>(out), d.M, d.N, d.K, s);
}

void norm_gate_up_f16(DLTensor* x, DLTensor* g, DLTensor* w, double eps, DLTensor* out, DLTensor* scratch) {
  const int64_t I = w->shape[0] / 2;
  const Linear d = check_linear(x, out, w->shape[0], w->shape[1], I);
  require(is(out, kDLFloat, 16), "gate/up output must be float16");
  cudaStream_t s = stream_of(x);
  const float e = static_cast<float>(eps);
  if (d.M <= kGemvMaxRows) {
    gemv_f16<OP_GATED, half>(ptr<half>(x), ptr<half>(g), ptr<half>(w), nullptr, ptr<half>(out), d.M, d.N, d.K, e, s);
    return;
  }
  require_scratch(scratch, (int64_t)d.M * (d.K + 2 * I));
  half* normed = ptr<half>(scratch);
  half* gate_up = normed + (size_t)d.M * d.K;
  rmsnorm(ptr<half>(x), ptr<half>(g), normed, d.M, d.K, e, s);
  gemm<half, false>(normed, ptr<half>(w), nullptr, gate_up, d.M, 2 * d.N, d.K, s);
  silu_mul(gate_up, ptr<half>(out), d.M, d.N, s);
}

void linear_q4(DLTensor* x, DLTensor* qw, DLTensor* qs, DLTensor* qm, DLTensor* out, DLTensor* scratch) {
  const Linear d = check_linear(x, out, qw->shape[0], qw->shape[1] * 8, qw->shape[0]);
  cudaStream_t s = stream_of(x);
  if (d.M <= kGemvMaxRows) {
    gemv_q4<OP_PLAIN>(ptr<half>(x), nullptr, ptr<uint32_t>(qw), ptr<half>(qs), ptr<half>(qm), nullptr,
                      ptr<half>(out), d.M, d.N, d.K, 0.f, s);
    return;
  }
  require_scratch(scratch, (int64_t)d.N * d.K);
  half* wf = ptr<half>(scratch);
  dequant_q4(ptr<uint32_t>(qw), ptr<half>(qs), ptr<half>(qm), wf, d.N, d.K, s);
  gemm<half, false>(ptr<half>(x), wf, nullptr, ptr<half>(out), d.M, d.N, d.K, s);
}

void linear_res_q4(DLTensor* x, DLTensor* qw, DLTensor* qs, DLTensor* qm, DLTensor* res, DLTensor* out,
                   DLTensor* scratch) {
  const Linear d = check_linear(x, out, qw->shape[0], qw->shape[1] * 8, qw->shape[0]);
  require(numel(res) == numel(out), "residual must match the output");
  cudaStream_t s = stream_of(x);
  if (d.M <= kGemvMaxRows) {
    gemv_q4<OP_RES>(ptr<half>(x), nullptr, ptr<uint32_t>(qw), ptr<half>(qs), ptr<half>(qm), ptr<half>(res),
                    ptr<half>(out), d.M, d.N, d.K, 0.f, s);
    return;
  }
  require_scratch(scratch, (int64_t)d.N * d.K);
  half* wf = ptr<half>(scratch);
  dequant_q4(ptr<uint32_t>(qw), ptr<half>(qs), ptr<half>(qm), wf, d.N, d.K, s);
  gemm<half, true>(ptr<half>(x), wf, ptr<half>(res), ptr<half>(out), d.M, d.N, d.K, s);
}

void norm_linear_q4(DLTensor* x, DLTensor* g, DLTensor* qw, DLTensor* qs, DLTensor* qm, double eps, DLTensor* out,
                    DLTensor* scratch) {
  const Linear d = check_linear(x, out, qw->shape[0], qw->shape[1] * 8, qw->shape[0]);
  cudaStream_t s = stream_of(x);
  const float e = static_cast<float>(eps);
  if (d.M <= kGemvMaxRows) {
    gemv_q4<OP_NORM>(ptr<half>(x), ptr<half>(g), ptr<uint32_t>(qw), ptr<half>(qs), ptr<half>(qm), nullptr,
                     ptr<half>(out), d.M, d.N, d.K, e, s);
    return;
  }
  require_scratch(scratch, (int64_t)d.N * d.K + (int64_t)d.M * d.K);
  half* wf = ptr<half>(scratch);
  half* normed = wf + (size_t)d.N * d.K;
  dequant_q4(ptr<uint32_t>(qw), ptr<half>(qs), ptr<half>(qm), wf, d.N, d.K, s);
  rmsnorm(ptr<half>(x), ptr<half>(g), normed, d.M, d.K, e, s);
  gemm<half, false>(normed, wf, nullptr, ptr<half>(out), d.M, d.N, d.K, s);
}

void norm_gate_up_q4(DLTensor* x, DLTensor* g, DLTensor* qw, DLTensor* qs, DLTensor* qm, double eps, DLTensor* out,
                     DLTensor* scratch) {
  const int64_t I = qw->shape[0] / 2;
  const Linear d = check_linear(x, out, qw->shape[0], qw->shape[1] * 8, I);
  cudaStream_t s = stream_of(x);
  const float e = static_cast<float>(eps);
  if (d.M <= kGemvMaxRows) {
    gemv_q4<OP_GATED>(ptr<half>(x), ptr<half>(g), ptr<uint32_t>(qw), ptr<half>(qs), ptr<half>(qm), nullptr,
                      ptr<half>(out), d.M, d.N, d.K, e, s);
    return;
  }
  require_scratch(scratch, 2 * I * d.K + (int64_t)d.M * (d.K + 2 * I));
  half* wf = ptr<half>(scratch);
  half* normed = wf + (size_t)2 * I * d.K;
  half* gate_up = normed + (size_t)d.M * d.K;
  dequant_q4(ptr<uint32_t>(qw), ptr<half>(qs), ptr<half>(qm), wf, 2 * d.N, d.K, s);
  rmsnorm(ptr<half>(x), ptr<half>(g), normed, d.M, d.K, e, s);
  gemm<half, false>(normed, wf, nullptr, gate_up, d.M, 2 * d.N, d.K, s);
  silu_mul(gate_up, ptr<half>(out), d.M, d.N, s);
}

// params[b] = (temperature, top_p, top_k, min_p, uniform) as float32: one host-to-device copy.
void sample_tokens(DLTensor* logits, DLTensor* params, DLTensor* out) {
  require(is(logits, kDLFloat, 32) && logits->ndim >= 2, "logits must be float32 (batch, vocab)");
  const int64_t V = logits->shape[logits->ndim - 1];
  const int64_t B = numel(logits) / V;
  require(is(params, kDLFloat, 32) && numel(params) == B * kSampleParams, "params must be float32 (batch, 5)");
  require(is(out, kDLInt, 32) && numel(out) == B, "the output must be int32 (batch,)");
  if (B == 0) return;
  sample_kernel<<<static_cast<unsigned>(B), SAMPLE_THREADS, 0, stream_of(logits)>>>(
      ptr<float>(logits), ptr<float>(params), ptr<int>(out), static_cast<int>(V));
  check_launch("sample_tokens");
}

// Benchmark/tuning only: pin the configuration of one kernel kind (-1: back to the table).
void force_config(int64_t kind, int64_t config) {
  require(kind >= 0 && kind < 3, "kind must be 0 (gemv f16), 1 (gemv q4) or 2 (gemm)");
  forced_config[kind] = static_cast<int>(config);
}

}  // namespace ferrum

TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_linear_f16, ferrum::linear_f16);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_linear_res_f16, ferrum::linear_res_f16);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_norm_linear_f16, ferrum::norm_linear_f16);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_norm_logits_f16, ferrum::norm_linear_f16);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_norm_gate_up_f16, ferrum::norm_gate_up_f16);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_linear_q4, ferrum::linear_q4);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_linear_res_q4, ferrum::linear_res_q4);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_norm_linear_q4, ferrum::norm_linear_q4);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_norm_gate_up_q4, ferrum::norm_gate_up_q4);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_sample_tokens, ferrum::sample_tokens);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_force_config, ferrum::force_config);
