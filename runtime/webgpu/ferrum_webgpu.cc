// Ferrum's WebGPU runtime for TVM: runs the WGSL kernels of TVM's `webgpu` codegen natively over
// wgpu-native (Vulkan, Metal or D3D12), so a Vulkan box serves an artifact with the TVM runtime and
// wgpu's shared library alone.
//
// It registers what the PyPI TVM wheel lacks for a webgpu device:
//   device_api.webgpu                    buffers, copies, stream sync (a DeviceAPI*);
//   ffi.Module.load_from_bytes.webgpu    the device module of an exported library;
//   ferrum.webgpu.adapter_info           the adapter's name, backend, features and limits (JSON);
//   ferrum.webgpu.stats                  counters of dispatches, submits, copies and bind groups, and
//                                        with FERRUM_WEBGPU_PROFILE=1 the host time spent in each (JSON).
// The kernel protocol is tvmjs's (tvm/web/src/webgpu.ts): one WGSL module per kernel, every
// buffer argument a storage binding of group 0 in order, the scalar arguments packed as 4-byte
// slots into one uniform at the binding after them, then a u32 `packGridDimX`.
//
// Dispatches are batched: kernels are encoded into one compute pass of one command buffer that is
// submitted only when the host needs the results (a device-to-host copy, a stream sync) or writes
// memory the pending kernels may read (a host-to-device copy). Each kernel's scalars go into its
// own 256-byte slot of a uniform ring written once per submit, so a decode step is one submit.
// The uniform is bound with a dynamic offset, so a kernel's bind group depends on its storage
// buffers alone and is cached by them: weights and the KV cache never move, and the Relax VM's
// pooled allocator hands a step the buffers of the last one, so after the first steps a dispatch
// creates no bind group. Freeing a buffer evicts every cached group that binds it (a new buffer
// may come back at the same handle); FERRUM_WEBGPU_GROUP_CACHE=0 creates one per dispatch instead.
// The library is built by compile/webgpu_plugin.py against the wheel's headers and loaded by
// runtime/tvm_env.py after wgpu-native (whose symbols it takes from the global scope).

#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/runtime/device_api.h>
#include <webgpu.h>
#include <wgpu.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ferrum {
namespace webgpu {

using tvm::ffi::Any;
using tvm::ffi::Bytes;
using tvm::ffi::Function;
using tvm::ffi::Module;
using tvm::ffi::ModuleObj;
using tvm::ffi::Optional;
using tvm::ffi::PackedArgs;
using tvm::ffi::String;

constexpr uint64_t kUniformSlot = 256;      // minUniformBufferOffsetAlignment of every adapter
constexpr uint64_t kUniformSlots = 4096;    // dispatches per submit before the ring is flushed
constexpr uint32_t kMaxGridDim = 65535;     // workgroups per dimension (WebGPU's minimum limit)
constexpr size_t kMaxCachedGroups = 1 << 16;  // a bound for pathological churn: then the cache restarts

bool EnvFlag(const char* name, bool fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return !(v[0] == '0' && v[1] == '\0');
}

// What the plugin did since the process started (or the last reset), for benches and tests.
// Counts are always kept (an increment each); the host times only with FERRUM_WEBGPU_PROFILE=1.
struct Stats {
  uint64_t dispatches = 0, submits = 0, writes = 0, readbacks = 0, device_copies = 0, syncs = 0;
  uint64_t groups_created = 0, group_hits = 0, groups_evicted = 0;
  uint64_t launch_ns = 0, group_ns = 0, encode_ns = 0, submit_ns = 0, pass_end_ns = 0, queue_submit_ns = 0;
  uint64_t write_ns = 0, readback_ns = 0, sync_ns = 0;

  std::string Json(size_t cached) const {
    std::ostringstream os;
    os << "{\"dispatches\": " << dispatches << ", \"submits\": " << submits << ", \"writes\": " << writes
       << ", \"readbacks\": " << readbacks << ", \"device_copies\": " << device_copies << ", \"syncs\": " << syncs
       << ", \"groups_created\": " << groups_created << ", \"group_hits\": " << group_hits
       << ", \"groups_evicted\": " << groups_evicted << ", \"groups_cached\": " << cached
       << ", \"launch_ns\": " << launch_ns << ", \"group_ns\": " << group_ns << ", \"encode_ns\": " << encode_ns
       << ", \"submit_ns\": " << submit_ns << ", \"pass_end_ns\": " << pass_end_ns
       << ", \"queue_submit_ns\": " << queue_submit_ns << ", \"write_ns\": " << write_ns << ", \"readback_ns\": " << readback_ns
       << ", \"sync_ns\": " << sync_ns << "}";
    return os.str();
  }
};

// Adds the nanoseconds of its scope to a Stats field when profiling is on (else reads no clock).
class ScopedTimer {
 public:
  ScopedTimer(bool on, uint64_t* sink) : sink_(on ? sink : nullptr) {
    if (sink_ != nullptr) start_ = std::chrono::steady_clock::now();
  }
  ~ScopedTimer() {
    if (sink_ != nullptr) {
      *sink_ += std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start_).count();
    }
  }
  ScopedTimer(const ScopedTimer&) = delete;
  ScopedTimer& operator=(const ScopedTimer&) = delete;

 private:
  uint64_t* sink_;
  std::chrono::steady_clock::time_point start_;
};

// Bind groups by (layout, storage buffers in binding order), with the buffers' reverse index so
// that freeing a buffer evicts exactly the groups that bind it.
class BindGroupCache {
 public:
  using Key = std::vector<const void*>;  // [layout, buffer 0, buffer 1, ...]

  // The cached group of `key`, or null.
  WGPUBindGroup Find(const Key& key) const {
    auto it = groups_.find(key);
    return it == groups_.end() ? nullptr : it->second;
  }

  // Caches `group` under `key`; `retired` receives groups dropped to keep the cache bounded.
  void Insert(const Key& key, WGPUBindGroup group, std::vector<WGPUBindGroup>* retired) {
    if (groups_.size() >= kMaxCachedGroups) Clear(retired);
    auto [it, inserted] = groups_.emplace(key, group);
    if (!inserted) {  // cannot happen (callers look up first); keep the old group, drop the new one
      retired->push_back(group);
      return;
    }
    const Key* stored = &it->first;  // unordered_map nodes do not move
    for (size_t i = 1; i < key.size(); ++i) {
      if (std::find(key.begin() + 1, key.begin() + i, key[i]) != key.begin() + i) continue;  // bound twice
      users_[key[i]].push_back(stored);
    }
  }

  // Drops every group binding `buffer` into `retired`; returns how many.
  size_t Evict(const void* buffer, std::vector<WGPUBindGroup>* retired) {
    auto it = users_.find(buffer);
    if (it == users_.end()) return 0;
    std::vector<const Key*> keys = std::move(it->second);
    users_.erase(it);
    for (const Key* key : keys) {
      for (size_t i = 1; i < key->size(); ++i) {
        const void* other = (*key)[i];
        if (other == buffer) continue;
        auto u = users_.find(other);
        if (u == users_.end()) continue;
        auto& list = u->second;
        auto pos = std::find(list.begin(), list.end(), key);
        if (pos != list.end()) {
          *pos = list.back();
          list.pop_back();
        }
        if (list.empty()) users_.erase(u);
      }
      auto g = groups_.find(*key);
      retired->push_back(g->second);
      groups_.erase(g);
    }
    return keys.size();
  }

  void Clear(std::vector<WGPUBindGroup>* retired) {
    for (auto& [key, group] : groups_) retired->push_back(group);
    groups_.clear();
    users_.clear();
  }

  size_t size() const { return groups_.size(); }

 private:
  struct KeyHash {
    size_t operator()(const Key& key) const {
      uint64_t h = 1469598103934665603ull;
      for (const void* p : key) h = (h ^ reinterpret_cast<uintptr_t>(p)) * 1099511628211ull;
      return static_cast<size_t>(h ^ (h >> 29));
    }
  };
  std::unordered_map<Key, WGPUBindGroup, KeyHash> groups_;
  std::unordered_map<const void*, std::vector<const Key*>> users_;
};

std::string View(WGPUStringView s) {
  if (s.data == nullptr) return "";
  return s.length == WGPU_STRLEN ? std::string(s.data) : std::string(s.data, s.length);
}

WGPUStringView Str(const std::string& s) { return WGPUStringView{s.data(), s.size()}; }

uint64_t RoundUp4(uint64_t n) { return (n + 3) & ~uint64_t(3); }

std::string JsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

// The process's one WebGPU device (index 0): adapter, device, queue and the pending batch.
class Context {
 public:
  static Context* Global() {
    static Context* ctx = new Context();  // never destroyed: wgpu may still hold work at exit
    return ctx;
  }

  // The adapter (requesting it on first use); null with `error_` set when there is none.
  WGPUAdapter Adapter() {
    std::lock_guard<std::mutex> lock(mu_);
    EnsureAdapter();
    return adapter_;
  }

  WGPUDevice device() const { return device_; }

  std::mutex& mutex() { return mu_; }
  const WGPULimits& limits() const { return limits_; }

  // Caller holds the mutex. The device, created on first use with every limit the adapter has.
  void EnsureDevice() {
    if (device_ != nullptr) return;
    EnsureAdapter();
    if (adapter_ == nullptr) TVM_FFI_THROW(RuntimeError) << "no WebGPU adapter: " << error_;
    std::vector<WGPUFeatureName> features;
    for (WGPUFeatureName f : {WGPUFeatureName_ShaderF16, WGPUFeatureName_Subgroups}) {
      if (wgpuAdapterHasFeature(adapter_, f)) features.push_back(f);
    }
    WGPUDeviceDescriptor desc = WGPU_DEVICE_DESCRIPTOR_INIT;
    desc.label = Str(label_);
    desc.requiredFeatureCount = features.size();
    desc.requiredFeatures = features.data();
    desc.requiredLimits = &limits_;
    desc.uncapturedErrorCallbackInfo.callback = [](WGPUDevice const*, WGPUErrorType, WGPUStringView message,
                                                   void* self, void*) {
      static_cast<Context*>(self)->device_error_ += View(message) + "\n";
    };
    desc.uncapturedErrorCallbackInfo.userdata1 = this;
    desc.deviceLostCallbackInfo.mode = WGPUCallbackMode_AllowSpontaneous;
    desc.deviceLostCallbackInfo.callback = [](WGPUDevice const*, WGPUDeviceLostReason reason, WGPUStringView message,
                                              void* self, void*) {
      if (reason != WGPUDeviceLostReason_Destroyed && reason != WGPUDeviceLostReason_CallbackCancelled) {
        static_cast<Context*>(self)->device_error_ += "device lost: " + View(message) + "\n";
      }
    };
    desc.deviceLostCallbackInfo.userdata1 = this;
    struct Result {
      bool done = false;
      WGPUDevice device = nullptr;
      std::string message;
    } result;
    WGPURequestDeviceCallbackInfo cb = WGPU_REQUEST_DEVICE_CALLBACK_INFO_INIT;
    cb.mode = WGPUCallbackMode_AllowProcessEvents;
    cb.callback = [](WGPURequestDeviceStatus status, WGPUDevice device, WGPUStringView message, void* r, void*) {
      auto* res = static_cast<Result*>(r);
      res->done = true;
      if (status == WGPURequestDeviceStatus_Success) res->device = device;
      res->message = View(message);
    };
    cb.userdata1 = &result;
    wgpuAdapterRequestDevice(adapter_, &desc, cb);
    while (!result.done) wgpuInstanceProcessEvents(instance_);
    if (result.device == nullptr) TVM_FFI_THROW(RuntimeError) << "cannot create a WebGPU device: " << result.message;
    device_ = result.device;
    queue_ = wgpuDeviceGetQueue(device_);
    WGPUBufferDescriptor ring = WGPU_BUFFER_DESCRIPTOR_INIT;
    ring.usage = WGPUBufferUsage_Uniform | WGPUBufferUsage_CopyDst;
    ring.size = kUniformSlot * kUniformSlots;
    uniform_ring_ = wgpuDeviceCreateBuffer(device_, &ring);
    uniform_host_.reserve(ring.size);
  }

  // Raises the errors wgpu reported since the last check (validation, out of memory, lost device).
  // `during` and `subject` name the operation (two parts, so a dispatch builds no string).
  void CheckErrors(const char* during, const std::string& subject = std::string()) {
    if (device_error_.empty()) return;
    std::string message;
    std::swap(message, device_error_);
    TVM_FFI_THROW(RuntimeError) << "WebGPU error during " << during << subject << ": " << message;
  }

  // Caller holds the mutex. The open compute pass, beginning a command buffer if needed.
  WGPUComputePassEncoder Pass() {
    if (pass_ == nullptr) {
      pass_ = wgpuCommandEncoderBeginComputePass(Encoder(), nullptr);
    }
    return pass_;
  }

  // Caller holds the mutex. The pending command encoder with no compute pass open (for copies).
  WGPUCommandEncoder EncoderForCopy() {
    EndPass();
    return Encoder();
  }

  // Caller holds the mutex. Offset of a fresh uniform slot holding `data`; flushes a full ring.
  uint64_t PushUniform(const uint32_t* data, size_t words) {
    if (uniform_host_.size() / kUniformSlot >= kUniformSlots) Submit();
    uint64_t offset = uniform_host_.size();
    uniform_host_.resize(offset + kUniformSlot, 0);
    std::memcpy(uniform_host_.data() + offset, data, words * sizeof(uint32_t));
    return offset;
  }

  WGPUBuffer uniform_ring() const { return uniform_ring_; }

  // Caller holds the mutex. Keeps `group` alive until the batch using it is submitted.
  void Hold(WGPUBindGroup group) { held_.push_back(group); }

  // Caller holds the mutex. The bind group cache and the list its dropped groups go to (released
  // at the next submit, after the commands that may use them).
  BindGroupCache& groups() { return groups_; }
  std::vector<WGPUBindGroup>* retired() { return &held_; }

  // Caller holds the mutex. Evicts the cached groups binding `buffer` (it is being freed).
  void Forget(const void* buffer) { stats.groups_evicted += groups_.Evict(buffer, &held_); }

  // Caller holds the mutex. Submits the pending batch (no wait).
  void Submit() {
    if (encoder_ == nullptr) {  // nothing encoded can still use the retired groups
      ReleaseHeld();
      return;
    }
    ScopedTimer timer(profile, &stats.submit_ns);
    ++stats.submits;
    {
      ScopedTimer end(profile, &stats.pass_end_ns);  // wgpu validates and records the pass's dispatches here
      EndPass();
    }
    if (!uniform_host_.empty()) {
      wgpuQueueWriteBuffer(queue_, uniform_ring_, 0, uniform_host_.data(), uniform_host_.size());
      uniform_host_.clear();
    }
    WGPUCommandBuffer commands = wgpuCommandEncoderFinish(encoder_, nullptr);
    wgpuCommandEncoderRelease(encoder_);
    encoder_ = nullptr;
    {
      ScopedTimer queue(profile, &stats.queue_submit_ns);
      wgpuQueueSubmit(queue_, 1, &commands);
    }
    wgpuCommandBufferRelease(commands);
    ReleaseHeld();
    CheckErrors("a submit");
  }

  // Caller holds the mutex. Submits the pending batch and waits for the queue to drain.
  void Sync() {
    if (device_ == nullptr) return;
    ++stats.syncs;
    Submit();
    ScopedTimer timer(profile, &stats.sync_ns);
    wgpuDevicePoll(device_, true, nullptr);
    CheckErrors("a sync");
  }

  // Bytes held by the buffers TVM allocated (wgpu reports no device memory figures).
  uint64_t allocated_bytes = 0;
  Stats stats;                                                    // under the mutex
  const bool profile = EnvFlag("FERRUM_WEBGPU_PROFILE", false);   // time the host work in `stats`
  const bool cache_groups = EnvFlag("FERRUM_WEBGPU_GROUP_CACHE", true);

  std::string StatsJson() {
    std::lock_guard<std::mutex> lock(mu_);
    return stats.Json(groups_.size());
  }

  void ResetStats() {
    std::lock_guard<std::mutex> lock(mu_);
    stats = Stats();
  }

  WGPUBuffer CreateBuffer(uint64_t nbytes, WGPUBufferUsage usage) {
    WGPUBufferDescriptor desc = WGPU_BUFFER_DESCRIPTOR_INIT;
    desc.usage = usage;
    desc.size = std::max<uint64_t>(4, RoundUp4(nbytes));  // never null, copies move whole words
    WGPUBuffer buf = wgpuDeviceCreateBuffer(device_, &desc);
    CheckErrors("an allocation");
    if (buf == nullptr) TVM_FFI_THROW(RuntimeError) << "WebGPU cannot allocate " << nbytes << " bytes";
    return buf;
  }

  // Caller holds the mutex. Copies `size` bytes at `offset` of `src` (4-byte aligned span) to `dst`.
  void ReadBack(WGPUBuffer src, uint64_t offset, void* dst, uint64_t size) {
    ++stats.readbacks;
    uint64_t begin = offset & ~uint64_t(3), end = RoundUp4(offset + size);
    uint64_t span = end - begin;
    if (readback_ == nullptr || wgpuBufferGetSize(readback_) < span) {
      if (readback_ != nullptr) wgpuBufferRelease(readback_);
      readback_ = CreateBuffer(std::max<uint64_t>(span, 1 << 20), WGPUBufferUsage_MapRead | WGPUBufferUsage_CopyDst);
    }
    wgpuCommandEncoderCopyBufferToBuffer(EncoderForCopy(), src, begin, readback_, 0, span);
    Submit();
    ScopedTimer timer(profile, &stats.readback_ns);  // the wait for the GPU and the copy out
    struct Mapped {
      bool done = false;
      WGPUMapAsyncStatus status = WGPUMapAsyncStatus_Error;
      std::string message;
    } mapped;
    WGPUBufferMapCallbackInfo cb = WGPU_BUFFER_MAP_CALLBACK_INFO_INIT;
    cb.mode = WGPUCallbackMode_AllowProcessEvents;
    cb.callback = [](WGPUMapAsyncStatus status, WGPUStringView message, void* m, void*) {
      auto* res = static_cast<Mapped*>(m);
      res->done = true;
      res->status = status;
      res->message = View(message);
    };
    cb.userdata1 = &mapped;
    wgpuBufferMapAsync(readback_, WGPUMapMode_Read, 0, span, cb);
    while (!mapped.done) {
      wgpuDevicePoll(device_, true, nullptr);
      wgpuInstanceProcessEvents(instance_);
    }
    CheckErrors("a device-to-host copy");
    if (mapped.status != WGPUMapAsyncStatus_Success) {
      TVM_FFI_THROW(RuntimeError) << "WebGPU cannot map the read-back buffer: " << mapped.message;
    }
    const auto* data = static_cast<const uint8_t*>(wgpuBufferGetConstMappedRange(readback_, 0, span));
    std::memcpy(dst, data + (offset - begin), size);
    wgpuBufferUnmap(readback_);
  }

  // Caller holds the mutex. Host bytes into `dst` at `offset`, after the kernels already encoded.
  void Write(WGPUBuffer dst, uint64_t offset, const void* src, uint64_t size) {
    ++stats.writes;
    Submit();  // queue writes run before the next submit: the pending kernels must go first
    ScopedTimer timer(profile, &stats.write_ns);
    uint64_t begin = offset & ~uint64_t(3), end = RoundUp4(offset + size);
    if (begin == offset && end == offset + size) {
      wgpuQueueWriteBuffer(queue_, dst, offset, src, size);
      return;
    }
    std::vector<uint8_t> span(end - begin);  // unaligned edges: read, patch, write the whole words
    ReadBack(dst, begin, span.data(), span.size());
    std::memcpy(span.data() + (offset - begin), src, size);
    wgpuQueueWriteBuffer(queue_, dst, begin, span.data(), span.size());
  }

  // The adapter as JSON: name, backend, type, driver, features and limits (for checks and status).
  std::string AdapterInfo() {
    std::lock_guard<std::mutex> lock(mu_);
    EnsureAdapter();
    std::ostringstream os;
    if (adapter_ == nullptr) {
      os << "{\"error\": \"" << JsonEscape(error_) << "\"}";
      return os.str();
    }
    WGPUAdapterInfo info = WGPU_ADAPTER_INFO_INIT;
    wgpuAdapterGetInfo(adapter_, &info);
    static const char* backends[] = {"undefined", "null", "webgpu", "d3d11", "d3d12", "metal", "vulkan", "opengl",
                                     "opengles"};
    static const char* types[] = {"", "discrete-gpu", "integrated-gpu", "cpu", "unknown"};
    int b = static_cast<int>(info.backendType), t = static_cast<int>(info.adapterType);
    os << "{\"name\": \"" << JsonEscape(View(info.device)) << "\", \"vendor\": \"" << JsonEscape(View(info.vendor))
       << "\", \"architecture\": \"" << JsonEscape(View(info.architecture)) << "\", \"driver\": \""
       << JsonEscape(View(info.description)) << "\", \"backend\": \"" << (b >= 0 && b <= 8 ? backends[b] : "other")
       << "\", \"adapter_type\": \"" << (t >= 1 && t <= 4 ? types[t] : "unknown") << "\", \"features\": [";
    wgpuAdapterInfoFreeMembers(info);
    const char* sep = "";
    for (auto [feature, name] : {std::pair{WGPUFeatureName_ShaderF16, "shader-f16"},
                                 std::pair{WGPUFeatureName_Subgroups, "subgroups"}}) {
      if (wgpuAdapterHasFeature(adapter_, feature)) {
        os << sep << "\"" << name << "\"";
        sep = ", ";
      }
    }
    const WGPULimits& l = limits_;
    os << "], \"limits\": {\"max_storage_buffer_binding_size\": " << l.maxStorageBufferBindingSize
       << ", \"max_buffer_size\": " << l.maxBufferSize
       << ", \"max_storage_buffers_per_shader_stage\": " << l.maxStorageBuffersPerShaderStage
       << ", \"max_compute_workgroup_storage_size\": " << l.maxComputeWorkgroupStorageSize
       << ", \"max_compute_invocations_per_workgroup\": " << l.maxComputeInvocationsPerWorkgroup
       << ", \"max_compute_workgroup_size_x\": " << l.maxComputeWorkgroupSizeX
       << ", \"max_compute_workgroups_per_dimension\": " << l.maxComputeWorkgroupsPerDimension
       << "}, \"allocated_bytes\": " << allocated_bytes << "}";
    return os.str();
  }

 private:
  Context() = default;

  void EnsureAdapter() {
    if (adapter_ != nullptr || !error_.empty()) return;
    WGPUInstanceExtras extras = {};
    extras.chain.sType = static_cast<WGPUSType>(WGPUSType_InstanceExtras);
    extras.backends = WGPUInstanceBackend_Primary;  // Vulkan, Metal, D3D12: never the GL fallback
    WGPUInstanceDescriptor idesc = WGPU_INSTANCE_DESCRIPTOR_INIT;
    idesc.nextInChain = &extras.chain;
    instance_ = wgpuCreateInstance(&idesc);
    if (instance_ == nullptr) {
      error_ = "wgpu-native cannot create an instance";
      return;
    }
    struct Result {
      bool done = false;
      WGPUAdapter adapter = nullptr;
      std::string message;
    } result;
    WGPURequestAdapterOptions opts = WGPU_REQUEST_ADAPTER_OPTIONS_INIT;
    opts.powerPreference = WGPUPowerPreference_HighPerformance;
    WGPURequestAdapterCallbackInfo cb = WGPU_REQUEST_ADAPTER_CALLBACK_INFO_INIT;
    cb.mode = WGPUCallbackMode_AllowProcessEvents;
    cb.callback = [](WGPURequestAdapterStatus status, WGPUAdapter adapter, WGPUStringView message, void* r, void*) {
      auto* res = static_cast<Result*>(r);
      res->done = true;
      if (status == WGPURequestAdapterStatus_Success) res->adapter = adapter;
      res->message = View(message);
    };
    cb.userdata1 = &result;
    wgpuInstanceRequestAdapter(instance_, &opts, cb);
    while (!result.done) wgpuInstanceProcessEvents(instance_);
    if (result.adapter == nullptr) {
      error_ = result.message.empty() ? "no Vulkan, Metal or D3D12 adapter found" : result.message;
      return;
    }
    adapter_ = result.adapter;
    limits_ = WGPU_LIMITS_INIT;
    wgpuAdapterGetLimits(adapter_, &limits_);
    limits_.nextInChain = nullptr;
  }

  void ReleaseHeld() {
    for (WGPUBindGroup g : held_) wgpuBindGroupRelease(g);
    held_.clear();
  }

  WGPUCommandEncoder Encoder() {
    if (encoder_ == nullptr) encoder_ = wgpuDeviceCreateCommandEncoder(device_, nullptr);
    return encoder_;
  }

  void EndPass() {
    if (pass_ == nullptr) return;
    wgpuComputePassEncoderEnd(pass_);
    wgpuComputePassEncoderRelease(pass_);
    pass_ = nullptr;
  }

  std::mutex mu_;
  std::string label_ = "ferrum";
  std::string error_;         // why there is no adapter
  std::string device_error_;  // errors wgpu reported since the last check
  WGPUInstance instance_ = nullptr;
  WGPUAdapter adapter_ = nullptr;
  WGPUDevice device_ = nullptr;
  WGPUQueue queue_ = nullptr;
  WGPULimits limits_ = WGPU_LIMITS_INIT;
  WGPUCommandEncoder encoder_ = nullptr;
  WGPUComputePassEncoder pass_ = nullptr;
  WGPUBuffer uniform_ring_ = nullptr;
  std::vector<uint8_t> uniform_host_;
  std::vector<WGPUBindGroup> held_;  // groups of the pending batch that nobody else keeps
  BindGroupCache groups_;
  WGPUBuffer readback_ = nullptr;
};

WGPUBuffer AsBuffer(const void* ptr) { return static_cast<WGPUBuffer>(const_cast<void*>(ptr)); }

// TVM's device API for kDLWebGPU: a device pointer is the WGPUBuffer itself.
class WebGPUDeviceAPI final : public tvm::runtime::DeviceAPI {
 public:
  static WebGPUDeviceAPI* Global() {
    static WebGPUDeviceAPI* api = new WebGPUDeviceAPI();
    return api;
  }

  void SetDevice(tvm::Device dev) final { CheckIndex(dev); }

  void GetAttr(tvm::Device dev, tvm::runtime::DeviceAttrKind kind, Any* rv) final {
    Context* ctx = Context::Global();
    if (kind == tvm::runtime::kExist) {
      *rv = static_cast<int>(dev.device_id == 0 && ctx->Adapter() != nullptr);
      return;
    }
    if (ctx->Adapter() == nullptr) return;
    const WGPULimits& l = ctx->limits();
    switch (kind) {
      case tvm::runtime::kMaxThreadsPerBlock:
        *rv = static_cast<int64_t>(l.maxComputeInvocationsPerWorkgroup);
        break;
      case tvm::runtime::kMaxSharedMemoryPerBlock:
        *rv = static_cast<int64_t>(l.maxComputeWorkgroupStorageSize);
        break;
      case tvm::runtime::kWarpSize:
        *rv = 1;  // no subgroup ops are generated
        break;
      case tvm::runtime::kDeviceName: {
        WGPUAdapterInfo info = WGPU_ADAPTER_INFO_INIT;
        wgpuAdapterGetInfo(ctx->Adapter(), &info);
        *rv = String(View(info.device));
        wgpuAdapterInfoFreeMembers(info);
        break;
      }
      default:
        break;
    }
  }

  void* AllocDataSpace(tvm::Device dev, size_t nbytes, size_t, DLDataType) final {
    CheckIndex(dev);
    Context* ctx = Context::Global();
    std::lock_guard<std::mutex> lock(ctx->mutex());
    ctx->EnsureDevice();
    const WGPULimits& l = ctx->limits();
    if (nbytes > l.maxBufferSize) {
      TVM_FFI_THROW(RuntimeError) << "WebGPU buffer of " << nbytes << " bytes exceeds the adapter's maxBufferSize "
                                  << l.maxBufferSize;
    }
    WGPUBuffer buf = ctx->CreateBuffer(nbytes, WGPUBufferUsage_Storage | WGPUBufferUsage_CopySrc | WGPUBufferUsage_CopyDst);
    ctx->allocated_bytes += wgpuBufferGetSize(buf);
    return buf;
  }

  void FreeDataSpace(tvm::Device, void* ptr) final {
    Context* ctx = Context::Global();
    std::lock_guard<std::mutex> lock(ctx->mutex());
    ctx->allocated_bytes -= wgpuBufferGetSize(AsBuffer(ptr));
    ctx->Forget(ptr);  // a later buffer may get this handle: no cached group may still bind this one
    wgpuBufferRelease(AsBuffer(ptr));  // wgpu keeps it alive for work already encoded
  }

  void StreamSync(tvm::Device, TVMStreamHandle) final {
    Context* ctx = Context::Global();
    std::lock_guard<std::mutex> lock(ctx->mutex());
    ctx->Sync();
  }

 protected:
  void CopyDataFromTo(const void* from, size_t from_offset, void* to, size_t to_offset, size_t size,
                      tvm::Device dev_from, tvm::Device dev_to, DLDataType, TVMStreamHandle) final {
    if (size == 0) return;
    Context* ctx = Context::Global();
    std::lock_guard<std::mutex> lock(ctx->mutex());
    ctx->EnsureDevice();
    bool from_gpu = dev_from.device_type == kDLWebGPU, to_gpu = dev_to.device_type == kDLWebGPU;
    if (from_gpu && to_gpu) {
      if (from_offset % 4 == 0 && to_offset % 4 == 0 && size % 4 == 0) {
        ++ctx->stats.device_copies;
        wgpuCommandEncoderCopyBufferToBuffer(ctx->EncoderForCopy(), AsBuffer(from), from_offset, AsBuffer(to),
                                             to_offset, size);
      } else {
        std::vector<uint8_t> bounce(size);
        ctx->ReadBack(AsBuffer(from), from_offset, bounce.data(), size);
        ctx->Write(AsBuffer(to), to_offset, bounce.data(), size);
      }
    } else if (from_gpu && dev_to.device_type == kDLCPU) {
      ctx->ReadBack(AsBuffer(from), from_offset, static_cast<uint8_t*>(to) + to_offset, size);
    } else if (to_gpu && dev_from.device_type == kDLCPU) {
      ctx->Write(AsBuffer(to), to_offset, static_cast<const uint8_t*>(from) + from_offset, size);
    } else {
      TVM_FFI_THROW(RuntimeError) << "WebGPU cannot copy between device types " << dev_from.device_type << " and "
                                  << dev_to.device_type;
    }
  }

 private:
  static void CheckIndex(tvm::Device dev) {
    if (dev.device_id != 0) TVM_FFI_THROW(ValueError) << "WebGPU device " << dev.device_id << " does not exist (only 0)";
  }
};

// One kernel of the device module: its calling convention and, once launched, its pipeline.
struct Kernel {
  std::string name;
  std::string source;
  std::vector<int> arg_kinds;      // per argument: 0 handle, 1 int32, 2 uint32, 3 float32
  std::vector<bool> writes;        // per handle: bound read-write (else read-only)
  std::vector<int> launch_dims;    // per launch value: 0..2 blockIdx.xyz, 3..5 threadIdx.xyz
  size_t num_buffers = 0;
  WGPUComputePipeline pipeline = nullptr;
  WGPUBindGroupLayout layout = nullptr;

  // Caller holds the mutex, device created.
  void EnsurePipeline(Context* ctx) {
    if (pipeline != nullptr) return;
    WGPUDevice device = ctx->device();
    if (num_buffers > ctx->limits().maxStorageBuffersPerShaderStage) {
      TVM_FFI_THROW(RuntimeError) << "WebGPU kernel " << name << " binds " << num_buffers
                                  << " storage buffers; the adapter allows "
                                  << ctx->limits().maxStorageBuffersPerShaderStage;
    }
    std::vector<WGPUBindGroupLayoutEntry> entries(num_buffers + 1);
    for (size_t i = 0; i <= num_buffers; ++i) {
      WGPUBindGroupLayoutEntry e = WGPU_BIND_GROUP_LAYOUT_ENTRY_INIT;
      e.binding = static_cast<uint32_t>(i);
      e.visibility = WGPUShaderStage_Compute;
      e.buffer.type = i == num_buffers ? WGPUBufferBindingType_Uniform
                      : writes[i]      ? WGPUBufferBindingType_Storage
                                       : WGPUBufferBindingType_ReadOnlyStorage;
      e.buffer.hasDynamicOffset = i == num_buffers;  // the uniform ring's slot, per dispatch
      entries[i] = e;
    }
    WGPUBindGroupLayoutDescriptor ldesc = WGPU_BIND_GROUP_LAYOUT_DESCRIPTOR_INIT;
    ldesc.entryCount = entries.size();
    ldesc.entries = entries.data();
    layout = wgpuDeviceCreateBindGroupLayout(device, &ldesc);
    WGPUPipelineLayoutDescriptor pdesc = WGPU_PIPELINE_LAYOUT_DESCRIPTOR_INIT;
    pdesc.bindGroupLayoutCount = 1;
    pdesc.bindGroupLayouts = &layout;
    WGPUPipelineLayout playout = wgpuDeviceCreatePipelineLayout(device, &pdesc);
    WGPUShaderSourceWGSL wgsl = WGPU_SHADER_SOURCE_WGSL_INIT;
    wgsl.code = Str(source);
    WGPUShaderModuleDescriptor sdesc = WGPU_SHADER_MODULE_DESCRIPTOR_INIT;
    sdesc.nextInChain = &wgsl.chain;
    sdesc.label = Str(name);
    WGPUShaderModule shader = wgpuDeviceCreateShaderModule(device, &sdesc);
    WGPUComputePipelineDescriptor cdesc = WGPU_COMPUTE_PIPELINE_DESCRIPTOR_INIT;
    cdesc.layout = playout;
    cdesc.compute.module = shader;
    cdesc.compute.entryPoint = Str(name);
    pipeline = wgpuDeviceCreateComputePipeline(device, &cdesc);
    wgpuShaderModuleRelease(shader);
    wgpuPipelineLayoutRelease(playout);
    ctx->CheckErrors("creating the pipeline of kernel ", name);
  }

  // args: the kernel's arguments in order, then one value per launch dimension.
  void Launch(PackedArgs args) {
    size_t num_args = arg_kinds.size();
    if (static_cast<size_t>(args.size()) != num_args + launch_dims.size()) {
      TVM_FFI_THROW(ValueError) << "WebGPU kernel " << name << " takes " << num_args + launch_dims.size()
                                << " arguments, got " << args.size();
    }
    uint32_t grid[3] = {1, 1, 1};
    for (size_t i = 0; i < launch_dims.size(); ++i) {
      if (launch_dims[i] < 3) grid[launch_dims[i]] = static_cast<uint32_t>(args[num_args + i].cast<int64_t>());
    }
    uint64_t count = grid[0];
    if (count == 0 || grid[1] == 0) return;
    // More workgroups than one dimension holds: split x into z. The WGSL guard returns when
    // z * gridDim.x + x > packGridDimX, so packGridDimX = count - 1 stops exactly the surplus ones.
    uint32_t x = grid[0], z = 1;
    while (x > kMaxGridDim) {
      x = (x + 1) / 2;
      z *= 2;
    }
    constexpr size_t kMaxWords = kUniformSlot / sizeof(uint32_t);
    if (num_args - num_buffers + 1 > kMaxWords) {
      TVM_FFI_THROW(ValueError) << "WebGPU kernel " << name << " has " << num_args - num_buffers << " scalar arguments";
    }
    uint32_t pod[kMaxWords];
    size_t words = 0;
    Context* ctx = Context::Global();
    std::lock_guard<std::mutex> lock(ctx->mutex());
    ScopedTimer timer(ctx->profile, &ctx->stats.launch_ns);
    ++ctx->stats.dispatches;
    ctx->EnsureDevice();
    EnsurePipeline(ctx);
    key_.resize(num_buffers + 1);
    key_[0] = layout;
    size_t b = 0;
    for (size_t i = 0; i < num_args; ++i) {
      switch (arg_kinds[i]) {
        case 0: {
          void* ptr = args[i].cast<void*>();
          if (ptr == nullptr) TVM_FFI_THROW(ValueError) << "WebGPU kernel " << name << ": buffer " << b << " is null";
          key_[++b] = ptr;
          break;
        }
        case 1:
          pod[words++] = static_cast<uint32_t>(static_cast<int32_t>(args[i].cast<int64_t>()));
          break;
        case 2:
          pod[words++] = static_cast<uint32_t>(args[i].cast<int64_t>());
          break;
        default: {
          float f = static_cast<float>(args[i].cast<double>());
          std::memcpy(&pod[words++], &f, sizeof(float));
        }
      }
    }
    pod[words++] = static_cast<uint32_t>(count - 1);  // packGridDimX (see the split above)
    WGPUBindGroup group = ctx->cache_groups ? ctx->groups().Find(key_) : nullptr;
    if (group != nullptr) {
      ++ctx->stats.group_hits;
    } else {
      group = CreateGroup(ctx);
      if (ctx->cache_groups) {
        ctx->groups().Insert(key_, group, ctx->retired());
      } else {
        ctx->Hold(group);
      }
    }
    uint32_t offset = static_cast<uint32_t>(ctx->PushUniform(pod, words));
    ScopedTimer encode(ctx->profile, &ctx->stats.encode_ns);
    WGPUComputePassEncoder pass = ctx->Pass();
    wgpuComputePassEncoderSetPipeline(pass, pipeline);
    wgpuComputePassEncoderSetBindGroup(pass, 0, group, 1, &offset);
    wgpuComputePassEncoderDispatchWorkgroups(pass, x, grid[1], z);
    ctx->CheckErrors("launching kernel ", name);
  }

 private:
  // Caller holds the mutex. A new bind group of the buffers in `key_` and the uniform ring (whose
  // slot is chosen per dispatch by the dynamic offset).
  WGPUBindGroup CreateGroup(Context* ctx) {
    ScopedTimer timer(ctx->profile, &ctx->stats.group_ns);
    ++ctx->stats.groups_created;
    std::vector<WGPUBindGroupEntry> entries(num_buffers + 1);
    for (size_t b = 0; b < num_buffers; ++b) {
      WGPUBindGroupEntry e = WGPU_BIND_GROUP_ENTRY_INIT;
      e.binding = static_cast<uint32_t>(b);
      e.buffer = AsBuffer(key_[b + 1]);
      e.offset = 0;
      e.size = wgpuBufferGetSize(e.buffer);
      if (e.size > ctx->limits().maxStorageBufferBindingSize) {
        TVM_FFI_THROW(RuntimeError) << "WebGPU kernel " << name << ": buffer " << b << " of " << e.size
                                    << " bytes exceeds the adapter's maxStorageBufferBindingSize "
                                    << ctx->limits().maxStorageBufferBindingSize;
      }
      entries[b] = e;
    }
    WGPUBindGroupEntry u = WGPU_BIND_GROUP_ENTRY_INIT;
    u.binding = static_cast<uint32_t>(num_buffers);
    u.buffer = ctx->uniform_ring();
    u.offset = 0;
    u.size = kUniformSlot;  // the scalars' struct is at most one slot (checked in Launch)
    entries[num_buffers] = u;
    WGPUBindGroupDescriptor gdesc = WGPU_BIND_GROUP_DESCRIPTOR_INIT;
    gdesc.layout = layout;
    gdesc.entryCount = entries.size();
    gdesc.entries = entries.data();
    WGPUBindGroup group = wgpuDeviceCreateBindGroup(ctx->device(), &gdesc);
    ctx->CheckErrors("creating a bind group of kernel ", name);
    return group;
  }

  BindGroupCache::Key key_;  // scratch of Launch, under the mutex
};

// Little-endian reader of the serialized device module (strings: u64 length + bytes).
class Reader {
 public:
  explicit Reader(const Bytes& bytes) : data_(bytes.data()), size_(bytes.size()) {}
  uint64_t U64() { return Pod<uint64_t>(); }
  uint32_t U32() { return Pod<uint32_t>(); }
  std::string Str() {
    uint64_t n = U64();
    Need(n);
    std::string s(data_ + pos_, n);
    pos_ += n;
    return s;
  }
  bool done() const { return pos_ == size_; }

 private:
  template <typename T>
  T Pod() {
    Need(sizeof(T));
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  void Need(uint64_t n) {
    if (n > size_ - pos_) TVM_FFI_THROW(ValueError) << "truncated WebGPU device module";
  }
  const char* data_;
  size_t size_;
  size_t pos_ = 0;
};

class WebGPUModuleObj final : public ModuleObj {
 public:
  explicit WebGPUModuleObj(Bytes bytes) : bytes_(std::move(bytes)) { Parse(); }

  const char* kind() const final { return "webgpu"; }
  int GetPropertyMask() const final { return Module::kBinarySerializable | Module::kRunnable; }
  Bytes SaveToBytes() const final { return bytes_; }

  Optional<Function> GetFunction(const String& name) final {
    auto it = kernels_.find(std::string(name));
    if (it == kernels_.end()) return std::nullopt;
    std::shared_ptr<Kernel> kernel = it->second;
    return Function::FromPacked([kernel](PackedArgs args, Any*) { kernel->Launch(args); });
  }

  String InspectSource(const String&) const final {
    std::string all;
    for (const auto& [name, kernel] : kernels_) all += "// " + name + "\n" + kernel->source + "\n";
    return all;
  }

 private:
  void Parse() {
    Reader r(bytes_);
    uint64_t nfunc = r.U64();
    for (uint64_t i = 0; i < nfunc; ++i) {
      auto kernel = std::make_shared<Kernel>();
      std::string key = r.Str();
      kernel->name = r.Str();
      uint64_t nargs = r.U64();
      for (uint64_t a = 0; a < nargs; ++a) {
        uint32_t t = r.U32();  // DLDataType: code (u8), bits (u8), lanes (u16)
        int code = t & 0xff, bits = (t >> 8) & 0xff, lanes = t >> 16;
        if (code == kDLOpaqueHandle) {
          kernel->arg_kinds.push_back(0);
          ++kernel->num_buffers;
        } else if (bits == 32 && lanes == 1 && (code == kDLInt || code == kDLUInt || code == kDLFloat)) {
          kernel->arg_kinds.push_back(code == kDLInt ? 1 : code == kDLUInt ? 2 : 3);
        } else {
          TVM_FFI_THROW(ValueError) << "WebGPU kernel " << kernel->name << ": unsupported scalar argument (code "
                                    << code << ", " << bits << " bits, " << lanes << " lanes)";
        }
      }
      uint64_t ntags = r.U64();
      for (uint64_t t = 0; t < ntags; ++t) ParseTag(kernel.get(), r.Str());
      uint64_t nextra = r.U64();
      for (uint64_t e = 0; e < nextra; ++e) r.U32();  // arg extra tags: none concern WebGPU
      if (kernel->writes.size() != kernel->num_buffers) {
        TVM_FFI_THROW(ValueError) << "WebGPU kernel " << kernel->name << " lacks the write access of its buffers";
      }
      kernels_[key] = kernel;
    }
    uint64_t nsrc = r.U64();
    for (uint64_t i = 0; i < nsrc; ++i) {
      std::string key = r.Str();
      std::string source = r.Str();
      auto it = kernels_.find(key);
      if (it != kernels_.end()) it->second->source = std::move(source);
    }
    if (!r.done()) TVM_FFI_THROW(ValueError) << "WebGPU device module has trailing bytes";
    for (const auto& [key, kernel] : kernels_) {
      if (kernel->source.empty()) TVM_FFI_THROW(ValueError) << "WebGPU kernel " << key << " has no WGSL source";
    }
  }

  static void ParseTag(Kernel* kernel, const std::string& tag) {
    static const std::string kWrite = "paramWriteAccess:";
    if (tag.rfind("blockIdx.", 0) == 0 && tag.size() == 10) {
      kernel->launch_dims.push_back(tag[9] - 'x');
    } else if (tag.rfind("threadIdx.", 0) == 0 && tag.size() == 11) {
      kernel->launch_dims.push_back(3 + tag[10] - 'x');  // fixed in the WGSL's workgroup_size
    } else if (tag.rfind(kWrite, 0) == 0) {
      for (char c : tag.substr(kWrite.size())) {  // a JSON list of 0/1
        if (c == '0' || c == '1') kernel->writes.push_back(c == '1');
      }
    } else {
      TVM_FFI_THROW(ValueError) << "WebGPU kernel " << kernel->name << ": unsupported launch tag " << tag;
    }
    if (!kernel->launch_dims.empty() && kernel->launch_dims.back() == 2) {
      TVM_FFI_THROW(ValueError) << "WebGPU kernel " << kernel->name << " uses blockIdx.z, which the grid split owns";
    }
  }

  Bytes bytes_;
  std::unordered_map<std::string, std::shared_ptr<Kernel>> kernels_;
};

Module LoadFromBytes(const Bytes& bytes) { return Module(tvm::ffi::make_object<WebGPUModuleObj>(bytes)); }

}  // namespace webgpu
}  // namespace ferrum

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  if (tvm::ffi::Function::GetGlobal("device_api.webgpu").has_value()) return;  // loaded by another artifact
  refl::GlobalDef()
      .def_packed("device_api.webgpu",
                  [](tvm::ffi::PackedArgs, tvm::ffi::Any* rv) {
                    *rv = static_cast<void*>(ferrum::webgpu::WebGPUDeviceAPI::Global());
                  })
      .def("ffi.Module.load_from_bytes.webgpu", ferrum::webgpu::LoadFromBytes)
      .def("ferrum.webgpu.adapter_info", []() { return ferrum::webgpu::Context::Global()->AdapterInfo(); })
      .def("ferrum.webgpu.stats", []() { return ferrum::webgpu::Context::Global()->StatsJson(); })
      .def("ferrum.webgpu.reset_stats", []() { ferrum::webgpu::Context::Global()->ResetStats(); });
}
