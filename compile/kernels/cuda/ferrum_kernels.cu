// Ferrum's CUDA kernels as TVM FFI functions, linked into a CUDA artifact's model.so and called
// from the Relax graph through call_dps_packed (outputs last). Each linear-layer entry point picks
// a GEMV kernel for 1..8 activation rows and the tensor-core GEMM above, with the tile
// configuration taken from the tuning table compiled in (tuning_table.inc, generated from the
// repository's measured database) or a size heuristic when the shape was never tuned.
#include <cuda_runtime.h>
#include <dlpack/dlpack.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_set>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>

#include "attention.cuh"
#include "decode_attention.cuh"
#include "gemm.cuh"
#include "gemv.cuh"
#include "pointwise.cuh"
#include "rope.cuh"
#include "sampling.cuh"

namespace ferrum {
namespace {

// ---------------------------------------------------------------------------------------------
// Configurations and the tuning table
// Kinds and their configuration counts come from ferrum_constants.h (compile/kernels/constants.py).
// Configurations: GEMV f16 (R, U) = (1, 4) (2, 2) (4, 2); GEMV int4 (1, 2) (2, 2) (4, 1), rows per
// warp capped by q4_rows; GEMM 0..7 as listed in gemm(); PATH_F16: the most activation rows for
// which an f16 op still takes the GEMV path (0..8; above it, the tensor-core GEMM).

struct TunedEntry {
  int sm, kind, op, n, k, m_max, config;
};
const TunedEntry kTuned[] = {
#include "tuning_table.inc"
    {-1, -1, 0, 0, 0, 0, 0}};

int sm_of_device = -1;

int device_sm() {
  int& sm = sm_of_device;
  if (sm < 0) {
    int dev = 0, major = 0, minor = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    sm = major * 10 + minor;
  }
  return sm;
}

// Set by the tuning harness only; -1: the table (or the heuristic) decides.
int forced_config[kNumKinds];
const bool forced_config_cleared = [] {
  for (int& c : forced_config) c = -1;
  return true;
}();

int heuristic(int kind, int m, int n) {
  if (kind == PATH_F16) return 4;  // measured on the H100: the GEMM overtakes the GEMV between 4 and 8 rows
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

// The forced configuration, else the tuned entry with the smallest m_max >= m, else -1.
int lookup(int kind, int op, int m, int n, int k) {
  if (forced_config[kind] >= 0) return forced_config[kind];
  int best = -1, best_m = 1 << 30;
  const int sm = device_sm();
  for (const TunedEntry& e : kTuned) {
    if (e.sm == sm && e.kind == kind && e.op == op && e.n == n && e.k == k && e.m_max >= m && e.m_max < best_m) {
      best = e.config;
      best_m = e.m_max;
    }
  }
  return best;
}

int choose(int kind, int op, int m, int n, int k) {
  const int cfg = lookup(kind, op, m, n, k);
  return cfg >= 0 ? cfg : heuristic(kind, m, n);
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

// Launch with programmatic dependent launch on sm_90+ (see pdl_wait in common.cuh): the kernel's
// launch and first weight fetches overlap the tail of the kernel before it, in CUDA graphs too.
// FERRUM_PDL=0 in the environment turns programmatic dependent launch off (for A/B measurements).
const bool pdl_enabled = [] {
  const char* v = std::getenv("FERRUM_PDL");
  return v == nullptr || std::strcmp(v, "0") != 0;
}();

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, Args... args) {
  if (!pdl_enabled || device_sm() < 90) {
    kernel<<<grid, block, smem, s>>>(args...);
    return;
  }
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = s;
  config.attrs = attr;
  config.numAttrs = 1;
  cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...);
}

// ---------------------------------------------------------------------------------------------
// Launchers
template <int MB, int R, int U, int OP, typename OutT>
void gemv_f16_at(const half* x, const half* g, const half* w, const half* res, OutT* out, int M, int N, int K,
                 float eps, cudaStream_t s) {
  const int blocks = (N + R * GEMV_WARPS - 1) / (R * GEMV_WARPS);
  launch(gemv_f16_kernel<MB, R, U, OP, OutT>, blocks, GEMV_WARPS * 32, 0, s, x, g, w, res, out, M, N, K, eps);
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
  launch(gemv_q4_kernel<MB, RC, U, OP, half>, blocks, GEMV_WARPS * 32, 0, s, x, g, qw, qs, qm, res, out, M, N, K, eps);
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

// Kernels whose dynamic shared-memory limit this library has raised. A namespace-scope set, not
// a function-static flag: those become GNU-unique symbols shared by every loaded copy of this
// file (one per artifact), so one artifact's flag would skip another's cudaFuncSetAttribute.
std::mutex smem_mutex;
std::unordered_set<const void*> smem_raised;

void allow_smem(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> lock(smem_mutex);
  if (smem_raised.insert(kernel).second)
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

template <int BM, int BN, int BK, int WM, int WN, int ST, typename OutT, bool RES, bool GATED>
void gemm_at(const half* A, const half* B, const half* R, OutT* C, int M, int N, int K, cudaStream_t s) {
  using S = GemmShape<BM, BN, BK, WM, WN, ST>;
  auto kernel = gemm_f16_kernel<BM, BN, BK, WM, WN, ST, OutT, RES, GATED>;
  allow_smem(reinterpret_cast<const void*>(kernel), S::kSmemBytes);
  constexpr int out_bn = GATED ? BN / 2 : BN;
  const int tiles = ((M + BM - 1) / BM) * ((N + out_bn - 1) / out_bn);
  launch(kernel, tiles, S::kThreads, S::kSmemBytes, s, A, B, R, C, M, N, K);
}

int gemm_bk(int cfg) { return cfg <= 2 ? 32 : 64; }

// C = A B^T (+ R), or with GATED: C = silu(A Bg^T) * (A Bu^T) for B = [Bg; Bu], C N wide. A GATED
// product without a measured configuration takes the one of the plain product of all 2N rows.
template <typename OutT, bool RES, bool GATED = false>
void gemm(const half* A, const half* B, const half* R, OutT* C, int M, int N, int K, cudaStream_t s) {
  int cfg = GATED ? lookup(GEMM_F16, OP_GATED, M, N, K) : choose(GEMM_F16, RES ? OP_RES : OP_PLAIN, M, N, K);
  if (cfg < 0) cfg = choose(GEMM_F16, OP_PLAIN, M, 2 * N, K);
  if (K % gemm_bk(cfg) != 0) cfg = 2;  // every supported K is a multiple of 32
  switch (cfg) {
    //                  BM   BN  BK WM WN ST
    case 0: gemm_at<128, 128, 32, 2, 4, 4, OutT, RES, GATED>(A, B, R, C, M, N, K, s); break;
    case 1: gemm_at<128, 256, 32, 2, 4, 3, OutT, RES, GATED>(A, B, R, C, M, N, K, s); break;
    case 2: gemm_at<64, 128, 32, 2, 2, 4, OutT, RES, GATED>(A, B, R, C, M, N, K, s); break;
    case 3: gemm_at<128, 128, 64, 2, 4, 3, OutT, RES, GATED>(A, B, R, C, M, N, K, s); break;
    case 4: gemm_at<64, 64, 64, 2, 2, 4, OutT, RES, GATED>(A, B, R, C, M, N, K, s); break;
    case 5: gemm_at<64, 32, 64, 2, 2, 4, OutT, RES, GATED>(A, B, R, C, M, N, K, s); break;
    case 6: gemm_at<32, 32, 64, 2, 2, 4, OutT, RES, GATED>(A, B, R, C, M, N, K, s); break;
    default: gemm_at<16, 32, 64, 1, 2, 4, OutT, RES, GATED>(A, B, R, C, M, N, K, s); break;
  }
  check_launch("gemm_f16");
}

void rmsnorm(const half* x, const half* g, half* y, int M, int K, float eps, cudaStream_t s) {
  rmsnorm_kernel<<<M, 256, 0, s>>>(x, g, y, K, eps);
  check_launch("rmsnorm");
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

Linear check_linear(const DLTensor* x, const DLTensor* out, int64_t w_cols_elems, int64_t out_features) {
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
  return {static_cast<int>(M), static_cast<int>(out_features), static_cast<int>(K)};
}

void require_scratch(const DLTensor* scratch, int64_t halves) {
  require(is(scratch, kDLFloat, 16) && numel(scratch) >= halves, "scratch buffer too small");
}

// The int4 GEMM path: the rows x K weights dequantized to fp16 at the start of scratch, which must
// also hold `after` more halves for the caller; returns the fp16 weights.
half* dequantized(const DLTensor* qw, const DLTensor* qs, const DLTensor* qm, const DLTensor* scratch, int rows,
                  int K, int64_t after, cudaStream_t s) {
  require_scratch(scratch, (int64_t)rows * K + after);
  half* wf = ptr<half>(scratch);
  dequant_q4(ptr<uint32_t>(qw), ptr<half>(qs), ptr<half>(qm), wf, rows, K, s);
  return wf;
}

// Whether an f16 op runs as GEMV (else the tensor-core GEMM) at d.M rows.
bool f16_gemv(int op, const Linear& d) {
  return d.M <= std::min(kGemvMaxRows, choose(PATH_F16, op, 1, d.N, d.K));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Entry points (TVM FFI, destination-passing: outputs last)

void linear_f16(DLTensor* x, DLTensor* w, DLTensor* out) {
  const Linear d = check_linear(x, out, w->shape[1], w->shape[0]);
  cudaStream_t s = stream_of(x);
  const half* xp = ptr<half>(x);
  const half* wp = ptr<half>(w);
  const bool gemv = f16_gemv(OP_PLAIN, d);
  if (is(out, kDLFloat, 32)) {
    if (gemv) gemv_f16<OP_PLAIN, float>(xp, nullptr, wp, nullptr, ptr<float>(out), d.M, d.N, d.K, 0.f, s);
    else gemm<float, false>(xp, wp, nullptr, ptr<float>(out), d.M, d.N, d.K, s);
  } else {
    if (gemv) gemv_f16<OP_PLAIN, half>(xp, nullptr, wp, nullptr, ptr<half>(out), d.M, d.N, d.K, 0.f, s);
    else gemm<half, false>(xp, wp, nullptr, ptr<half>(out), d.M, d.N, d.K, s);
  }
}

void linear_res_f16(DLTensor* x, DLTensor* w, DLTensor* res, DLTensor* out) {
  const Linear d = check_linear(x, out, w->shape[1], w->shape[0]);
  require(is(out, kDLFloat, 16) && numel(res) == numel(out), "residual must match the float16 output");
  cudaStream_t s = stream_of(x);
  if (f16_gemv(OP_RES, d))
    gemv_f16<OP_RES, half>(ptr<half>(x), nullptr, ptr<half>(w), ptr<half>(res), ptr<half>(out), d.M, d.N, d.K, 0.f, s);
  else
    gemm<half, true>(ptr<half>(x), ptr<half>(w), ptr<half>(res), ptr<half>(out), d.M, d.N, d.K, s);
}

void norm_linear_f16(DLTensor* x, DLTensor* g, DLTensor* w, double eps, DLTensor* out, DLTensor* scratch) {
  const Linear d = check_linear(x, out, w->shape[1], w->shape[0]);
  cudaStream_t s = stream_of(x);
  const half* xp = ptr<half>(x);
  const half* gp = ptr<half>(g);
  const half* wp = ptr<half>(w);
  const float e = static_cast<float>(eps);
  if (f16_gemv(OP_NORM, d)) {
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
  const Linear d = check_linear(x, out, w->shape[1], I);
  require(is(out, kDLFloat, 16), "gate/up output must be float16");
  cudaStream_t s = stream_of(x);
  const float e = static_cast<float>(eps);
  if (f16_gemv(OP_GATED, d)) {
    gemv_f16<OP_GATED, half>(ptr<half>(x), ptr<half>(g), ptr<half>(w), nullptr, ptr<half>(out), d.M, d.N, d.K, e, s);
    return;
  }
  require_scratch(scratch, (int64_t)d.M * d.K);
  half* normed = ptr<half>(scratch);
  rmsnorm(ptr<half>(x), ptr<half>(g), normed, d.M, d.K, e, s);
  gemm<half, false, true>(normed, ptr<half>(w), nullptr, ptr<half>(out), d.M, d.N, d.K, s);
}

void linear_q4(DLTensor* x, DLTensor* qw, DLTensor* qs, DLTensor* qm, DLTensor* out, DLTensor* scratch) {
  const Linear d = check_linear(x, out, qw->shape[1] * 8, qw->shape[0]);
  cudaStream_t s = stream_of(x);
  if (d.M <= kGemvMaxRows) {
    gemv_q4<OP_PLAIN>(ptr<half>(x), nullptr, ptr<uint32_t>(qw), ptr<half>(qs), ptr<half>(qm), nullptr,
                      ptr<half>(out), d.M, d.N, d.K, 0.f, s);
    return;
  }
  half* wf = dequantized(qw, qs, qm, scratch, d.N, d.K, 0, s);
  gemm<half, false>(ptr<half>(x), wf, nullptr, ptr<half>(out), d.M, d.N, d.K, s);
}

void linear_res_q4(DLTensor* x, DLTensor* qw, DLTensor* qs, DLTensor* qm, DLTensor* res, DLTensor* out,
                   DLTensor* scratch) {
  const Linear d = check_linear(x, out, qw->shape[1] * 8, qw->shape[0]);
  require(numel(res) == numel(out), "residual must match the output");
  cudaStream_t s = stream_of(x);
  if (d.M <= kGemvMaxRows) {
    gemv_q4<OP_RES>(ptr<half>(x), nullptr, ptr<uint32_t>(qw), ptr<half>(qs), ptr<half>(qm), ptr<half>(res),
                    ptr<half>(out), d.M, d.N, d.K, 0.f, s);
    return;
  }
  half* wf = dequantized(qw, qs, qm, scratch, d.N, d.K, 0, s);
  gemm<half, true>(ptr<half>(x), wf, ptr<half>(res), ptr<half>(out), d.M, d.N, d.K, s);
}

void norm_linear_q4(DLTensor* x, DLTensor* g, DLTensor* qw, DLTensor* qs, DLTensor* qm, double eps, DLTensor* out,
                    DLTensor* scratch) {
  const Linear d = check_linear(x, out, qw->shape[1] * 8, qw->shape[0]);
  cudaStream_t s = stream_of(x);
  const float e = static_cast<float>(eps);
  if (d.M <= kGemvMaxRows) {
    gemv_q4<OP_NORM>(ptr<half>(x), ptr<half>(g), ptr<uint32_t>(qw), ptr<half>(qs), ptr<half>(qm), nullptr,
                     ptr<half>(out), d.M, d.N, d.K, e, s);
    return;
  }
  half* wf = dequantized(qw, qs, qm, scratch, d.N, d.K, (int64_t)d.M * d.K, s);
  half* normed = wf + (size_t)d.N * d.K;
  rmsnorm(ptr<half>(x), ptr<half>(g), normed, d.M, d.K, e, s);
  gemm<half, false>(normed, wf, nullptr, ptr<half>(out), d.M, d.N, d.K, s);
}

void norm_gate_up_q4(DLTensor* x, DLTensor* g, DLTensor* qw, DLTensor* qs, DLTensor* qm, double eps, DLTensor* out,
                     DLTensor* scratch) {
  const int64_t I = qw->shape[0] / 2;
  const Linear d = check_linear(x, out, qw->shape[1] * 8, I);
  cudaStream_t s = stream_of(x);
  const float e = static_cast<float>(eps);
  if (d.M <= kGemvMaxRows) {
    gemv_q4<OP_GATED>(ptr<half>(x), ptr<half>(g), ptr<uint32_t>(qw), ptr<half>(qs), ptr<half>(qm), nullptr,
                      ptr<half>(out), d.M, d.N, d.K, e, s);
    return;
  }
  half* wf = dequantized(qw, qs, qm, scratch, 2 * d.N, d.K, (int64_t)d.M * d.K, s);
  half* normed = wf + (size_t)2 * I * d.K;
  rmsnorm(ptr<half>(x), ptr<half>(g), normed, d.M, d.K, e, s);
  gemm<half, false, true>(normed, wf, nullptr, ptr<half>(out), d.M, d.N, d.K, s);
}

namespace {

// params[b] = (temperature, top_p, top_k, min_p, uniform) as float32: one host-to-device copy;
// masks: nullptr, or int32 words [b, ceil(vocab / 32)] of allowed tokens (see sampling.cuh).
void sample_rows(DLTensor* logits, DLTensor* params, const DLTensor* masks, DLTensor* out, const char* name) {
  require(is(logits, kDLFloat, 32) && logits->ndim >= 2, "logits must be float32 (batch, vocab)");
  const int64_t V = logits->shape[logits->ndim - 1];
  const int64_t B = numel(logits) / V;
  require(is(params, kDLFloat, 32) && numel(params) == B * kSampleParams, "params must be float32 (batch, kSampleParams)");
  require(masks == nullptr || (is(masks, kDLInt, 32) && numel(masks) == B * ((V + 31) / 32)),
          "the mask must be int32 (batch, ceil(vocab / 32))");
  require(is(out, kDLInt, 32) && numel(out) == B, "the output must be int32 (batch,)");
  if (B == 0) return;
  sample_kernel<<<static_cast<unsigned>(B), SAMPLE_THREADS, 0, stream_of(logits)>>>(
      ptr<float>(logits), ptr<float>(params), masks == nullptr ? nullptr : ptr<uint32_t>(masks), ptr<int>(out),
      static_cast<int>(V));
  check_launch(name);
}

}  // namespace

void sample_tokens(DLTensor* logits, DLTensor* params, DLTensor* out) {
  sample_rows(logits, params, nullptr, out, "sample_tokens");
}

// sample_tokens under a grammar bitmask per row (all ones for a row without a grammar)
void sample_tokens_masked(DLTensor* logits, DLTensor* params, DLTensor* masks, DLTensor* out) {
  sample_rows(logits, params, masks, out, "sample_tokens_masked");
}

namespace {

template <int D>
void attention_prefill_at(const DLTensor* q, const DLTensor* qo_indptr, const DLTensor* k, const DLTensor* v,
                          const DLTensor* kv_indptr, DLTensor* out, DLTensor* lse, int batch, bool causal,
                          float scale_log2, cudaStream_t s) {
  auto kernel = attention_prefill_kernel<D>;
  allow_smem(reinterpret_cast<const void*>(kernel), AttnSmem<D>::kBytes);
  const int h_q = static_cast<int>(q->shape[1]), h_kv = static_cast<int>(k->shape[1]);
  const dim3 grid(static_cast<unsigned>((q->shape[0] + ATTN_BM - 1) / ATTN_BM + batch), static_cast<unsigned>(h_q));
  kernel<<<grid, ATTN_THREADS, AttnSmem<D>::kBytes, s>>>(ptr<half>(q), ptr<int>(qo_indptr), ptr<half>(k), ptr<half>(v),
                                                         ptr<int>(kv_indptr), ptr<half>(out), ptr<float>(lse), batch,
                                                         h_q, h_kv, causal ? 1 : 0, scale_log2);
}

}  // namespace

// The paged KV cache's ragged-prefill function (TVM's TIRRaggedPrefillFunc calling convention):
// q [n, h_q, d], k/v [n_kv, h_kv, d], indptrs [batch + 1] int32, output [n, h_q, d], lse [n, h_q].
// RoPE was already applied when the cache split the fused QKV (rope mode NORMAL).
void attention_prefill_ragged(DLTensor* q, DLTensor* qo_indptr, DLTensor* k, DLTensor* v, DLTensor* kv_indptr,
                              DLTensor* q_rope_position, DLTensor* k_rope_pos_offset, DLTensor* output, DLTensor* lse,
                              int64_t causal, int64_t rotary_mode, double rope_scale, double rope_theta,
                              double sm_scale) {
  (void)q_rope_position;
  (void)k_rope_pos_offset;
  (void)rope_scale;
  (void)rope_theta;
  require(rotary_mode == 0, "attention with inline RoPE is not supported (the cache applies RoPE first)");
  require(is(q, kDLFloat, 16) && is(k, kDLFloat, 16) && is(v, kDLFloat, 16) && is(output, kDLFloat, 16),
          "attention inputs must be float16");
  require(q->ndim == 3 && k->ndim == 3 && q->shape[1] % k->shape[1] == 0, "q [n, h_q, d] and k [n, h_kv, d]");
  const int batch = static_cast<int>(qo_indptr->shape[0] - 1);
  if (batch <= 0 || q->shape[0] == 0) return;
  const float scale_log2 = static_cast<float>(sm_scale * 1.4426950408889634);
  cudaStream_t s = stream_of(q);
  switch (q->shape[2]) {
    case 64: attention_prefill_at<64>(q, qo_indptr, k, v, kv_indptr, output, lse, batch, causal != 0, scale_log2, s); break;
    case 128: attention_prefill_at<128>(q, qo_indptr, k, v, kv_indptr, output, lse, batch, causal != 0, scale_log2, s); break;
    default: TVM_FFI_THROW(ValueError) << "ferrum kernels: attention head dim " << q->shape[2] << " is not 64 or 128";
  }
  check_launch("attention_prefill");
}

// The paged KV cache's decode function (TVM's TIRPagedDecodeFunc calling convention):
// q [b, h_q, d], pages [num_pages, 2, h_kv, page_size, d], page_indptr [b + 1], page_values,
// length_info [b] (tokens in each sequence's last page: no sliding window), output [b, h_q, d],
// lse [b, h_q].
void attention_decode_paged(DLTensor* q, DLTensor* pages, DLTensor* page_indptr, DLTensor* page_values,
                            DLTensor* length_info, DLTensor* k_rope_pos_offset, DLTensor* q_rope_position,
                            DLTensor* output, DLTensor* lse, int64_t rotary_mode, double rope_scale, double rope_theta,
                            double sm_scale) {
  (void)k_rope_pos_offset;
  (void)q_rope_position;
  (void)rope_scale;
  (void)rope_theta;
  require(rotary_mode == 0, "attention with inline RoPE is not supported (the cache applies RoPE first)");
  require(is(q, kDLFloat, 16) && is(pages, kDLFloat, 16) && q->ndim == 3 && pages->ndim == 5 && length_info->ndim == 1,
          "decode attention: q [b, h_q, d] float16, pages [n, 2, h_kv, page_size, d], length_info [b]");
  const int batch = static_cast<int>(q->shape[0]), h_q = static_cast<int>(q->shape[1]);
  const int h_kv = static_cast<int>(pages->shape[2]), page_size = static_cast<int>(pages->shape[3]);
  if (batch == 0) return;
  const float scale_log2 = static_cast<float>(sm_scale * 1.4426950408889634);
  const dim3 grid(static_cast<unsigned>(batch), static_cast<unsigned>(h_q));
  cudaStream_t s = stream_of(q);
  switch (q->shape[2]) {
    case 64:
      attention_decode_kernel<64><<<grid, DECODE_WARPS * 32, 0, s>>>(
          ptr<half>(q), ptr<half>(pages), ptr<int>(page_indptr), ptr<int>(page_values), ptr<int>(length_info),
          ptr<half>(output), ptr<float>(lse), h_q, h_kv, page_size, scale_log2);
      break;
    case 128:
      attention_decode_kernel<128><<<grid, DECODE_WARPS * 32, 0, s>>>(
          ptr<half>(q), ptr<half>(pages), ptr<int>(page_indptr), ptr<int>(page_values), ptr<int>(length_info),
          ptr<half>(output), ptr<float>(lse), h_q, h_kv, page_size, scale_log2);
      break;
    default: TVM_FFI_THROW(ValueError) << "ferrum kernels: attention head dim " << q->shape[2] << " is not 64 or 128";
  }
  check_launch("attention_decode");
}

// The paged KV cache's split-rotary function: qkv [n, h_q + 2 h_kv, d] -> q, k (RoPE applied when
// apply_rope) and v. theta and scale are fixed when the model is compiled (the cache passes only
// the tensors), so each build's values reach here through ferrum_split_rotary_<theta>_<scale>.
void split_rotary(DLTensor* qkv, DLTensor* positions, DLTensor* q, DLTensor* k, DLTensor* v, int64_t apply_rope,
                  float theta, float scale) {
  require(is(qkv, kDLFloat, 16) && qkv->ndim == 3 && q->ndim == 3 && k->ndim == 3, "split rotary: float16 [n, heads, d]");
  const int tokens = static_cast<int>(qkv->shape[0]), d = static_cast<int>(qkv->shape[2]);
  const int h_q = static_cast<int>(q->shape[1]), h_kv = static_cast<int>(k->shape[1]);
  require(qkv->shape[1] == h_q + 2 * h_kv && d % 2 == 0, "split rotary: qkv heads must be h_q + 2 h_kv");
  if (tokens == 0) return;
  // decode-sized inputs: one head per thread, so a handful of tokens still fills many threads
  const int heads = h_q + 2 * h_kv;
  const int per_thread = (int64_t)tokens * (d / 2) * heads < (1 << 16) ? 1 : ROPE_HEADS_PER_THREAD;
  const int groups = (heads + per_thread - 1) / per_thread;
  const int64_t threads = (int64_t)tokens * (d / 2) * groups;
  const int blocks = static_cast<int>(std::min<int64_t>((threads + 255) / 256, 65535));
  split_rotary_kernel<<<blocks, 256, 0, stream_of(qkv)>>>(ptr<half>(qkv), ptr<int>(positions), ptr<half>(q), ptr<half>(k),
                                                          ptr<half>(v), tokens, h_q, h_kv, d, theta, scale,
                                                          apply_rope ? 1 : 0, per_thread);
  check_launch("split_rotary");
}

// Tests only: split_rotary with explicit constants (models get theta/scale bound by their glue).
void split_rotary_with(DLTensor* qkv, DLTensor* positions, DLTensor* q, DLTensor* k, DLTensor* v, int64_t apply_rope,
                       double theta, double scale) {
  split_rotary(qkv, positions, q, k, v, apply_rope, static_cast<float>(theta), static_cast<float>(scale));
}

// Benchmark/tuning only: pin the configuration of one kernel kind (-1: back to the table).
void force_config(int64_t kind, int64_t config) {
  require(kind >= 0 && kind < kNumKinds, "kind must be an id of compile/kernels/constants.py KINDS");
  require(config >= -1 && config < kConfigCount[kind], "config out of range for this kind (-1: back to the table)");
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
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_sample_tokens_masked, ferrum::sample_tokens_masked);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_attention_prefill_ragged, ferrum::attention_prefill_ragged);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_attention_decode_paged, ferrum::attention_decode_paged);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_force_config, ferrum::force_config);
TVM_FFI_DLL_EXPORT_TYPED_FUNC(ferrum_split_rotary_with, ferrum::split_rotary_with);
