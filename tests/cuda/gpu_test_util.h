// Helpers for the GPU tests: whether a device is there (tests SKIP, naming why, where none is),
// device buffers that free themselves, bf16 <-> f32 on the host, NaN poisoning, and a log of the
// measured errors. Plain C++ over the CUDA runtime API, so g++ compiles the tests.
#pragma once
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/matmul.h"
#include "kernels/cuda/cuda_check.cuh"
#include "kernels/view.h"
#include "tests/catch.h"
#include "tests/kernels/kernel_test_util.h"

namespace stem::gpu_test {

// True when a CUDA device can be used; otherwise *reason says why (no driver, no device, ...).
// Asked once per process: the answer does not change while it runs.
inline bool gpu_available(std::string* reason = nullptr) {
  static const std::string why_not = [] {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    if (count == 0) return std::string("the CUDA runtime found 0 devices");
    return std::string();
  }();
  if (reason) *reason = why_not;
  return why_not.empty();
}

// Device memory that frees itself. Bytes, not elements: tests fill it with several dtypes.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) { CUDA_CHECK(cudaMalloc(&ptr_, bytes ? bytes : 1)); }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

  template <typename T>
  void upload(const std::vector<T>& host) {
    STEM_CHECK(host.size() * sizeof(T) <= bytes_, "upload of ", host.size() * sizeof(T), " bytes into ", bytes_);
    CUDA_CHECK(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  // Waits for all work on the device first, so a kernel's fault is reported here, not later.
  template <typename T>
  std::vector<T> download(size_t count) const {
    STEM_CHECK(count * sizeof(T) <= bytes_, "download of ", count * sizeof(T), " bytes from ", bytes_);
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<T> host(count);
    CUDA_CHECK(cudaMemcpy(host.data(), ptr_, count * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  // All bytes 0xFF: NaN read as f32 (0xFFFFFFFF) and as bf16 (0xFFFF), so any element a kernel
  // fails to write shows up as NaN.
  void poison() { CUDA_CHECK(cudaMemset(ptr_, 0xFF, bytes_)); }

  // A contiguous view of the start of the buffer.
  TensorView view(DType dtype, std::initializer_list<int64_t> dims) const {
    TensorView v(ptr_, dtype, dims);
    STEM_CHECK(static_cast<size_t>(v.numel()) * dtype_size(dtype) <= bytes_, "view ", v.str(), " over ", bytes_,
               " bytes");
    return v;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// ---- bf16 on the host ----

inline std::vector<uint16_t> to_bf16(const std::vector<float>& x) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = f32_to_bf16(x[i]);
  return out;
}
inline std::vector<float> from_bf16(const std::vector<uint16_t>& x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = bf16_to_f32(x[i]);
  return out;
}
// The values a bf16 tensor can hold: what the CPU twin must see for a fair comparison.
inline std::vector<float> round_to_bf16(std::vector<float> x) {
  for (float& v : x) v = bf16_to_f32(f32_to_bf16(v));
  return x;
}

// Random values in ±[0.05, 1)·scale (never zero), already rounded to bf16.
inline std::vector<float> random_bf16_values(std::mt19937_64& rng, int64_t n, float scale = 1.f) {
  return round_to_bf16(ktest::random_floats(rng, n, scale));
}

// Device buffers from host values.
inline std::unique_ptr<DeviceBuffer> upload_bf16(const std::vector<float>& values) {
  auto buf = std::make_unique<DeviceBuffer>(values.size() * 2);
  buf->upload(to_bf16(values));
  return buf;
}
template <typename T>
std::unique_ptr<DeviceBuffer> upload(const std::vector<T>& values) {
  auto buf = std::make_unique<DeviceBuffer>(values.size() * sizeof(T));
  buf->upload(values);
  return buf;
}
// Reads n elements of dtype (bf16 or f32) back as f32.
inline std::vector<float> download_f32(const DeviceBuffer& buf, DType dtype, int64_t n) {
  if (dtype == DType::BF16) return from_bf16(buf.download<uint16_t>(static_cast<size_t>(n)));
  STEM_CHECK(dtype == DType::F32, "download_f32 reads bf16 or f32, not ", dtype_name(dtype));
  return buf.download<float>(static_cast<size_t>(n));
}

// A [rows, cols] view onto columns [col0, col0 + cols) of a [rows, width] device buffer.
inline TensorView column_slice(const DeviceBuffer& buf, DType dtype, int64_t rows, int64_t width, int64_t col0,
                               int64_t cols) {
  TensorView v(static_cast<char*>(buf.get()) + col0 * static_cast<int64_t>(dtype_size(dtype)), dtype, {rows, cols});
  v.stride[0] = width;
  return v;
}

// ---- comparing ----

// ‖out − ref‖ / ‖ref‖ in double; any NaN in out makes it NaN, which fails every `<=` check.
inline double rel_error(const std::vector<float>& out, const std::vector<float>& ref) {
  STEM_CHECK(out.size() == ref.size(), "rel_error: ", out.size(), " values against ", ref.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = double{out[i]} - double{ref[i]};
    diff += d * d;
    norm += double{ref[i]} * ref[i];
  }
  return std::sqrt(diff) / std::sqrt(norm);
}

inline int64_t count_nan(const std::vector<float>& x) {
  return ktest::count_nan(x.data(), static_cast<int64_t>(x.size()));
}

// bf16 storage keeps 8 significant bits: one rounding is ≤ 2^-9 relative, a few stay under this.
constexpr double kBf16Tolerance = 1e-2;

// Appends "<what> <error>" to the file $STEM_TEST_REPORT names, if any, so that one GPU run
// leaves a table of every measured error (scripts/gpu_test.sh prints it).
inline void report_error(const std::string& what, double error) {
  const char* path = std::getenv("STEM_TEST_REPORT");
  if (!path || !*path) return;
  if (FILE* f = std::fopen(path, "a")) {
    std::fprintf(f, "%s %.3e\n", what.c_str(), error);
    std::fclose(f);
  }
}

// cpu::matmul (the twin of cuda::matmul and cuda::gemv) on bf16 values held in f32: out [m,n] =
// a [m,k] (row stride lda) · w [n,k]ᵀ + bias (empty: none).
inline std::vector<float> cpu_matmul(std::vector<float> a, int64_t lda, std::vector<float> w, std::vector<float> bias,
                                     int64_t m, int64_t n, int64_t k) {
  std::vector<float> out(static_cast<size_t>(m * n));
  TensorView a_v(a.data(), DType::F32, {m, k});
  a_v.stride[0] = lda;
  cpu::matmul(TensorView(out.data(), DType::F32, {m, n}), a_v, TensorView(w.data(), DType::F32, {n, k}),
              bias.empty() ? TensorView{} : TensorView(bias.data(), DType::F32, {n}));
  return out;
}

}  // namespace stem::gpu_test

// First line of every GPU test: SKIPs, naming why, where no CUDA device can be used.
#define STEM_REQUIRE_GPU()                                                                                 \
  do {                                                                                                     \
    std::string stem_gpu_reason_;                                                                          \
    if (!::stem::gpu_test::gpu_available(&stem_gpu_reason_)) SKIP("no CUDA device: " << stem_gpu_reason_); \
  } while (0)

// Checks that out has no NaN (every element written) and is within tol of ref; logs the error.
#define STEM_CHECK_CLOSE(what, out, ref, tol)                       \
  do {                                                              \
    const double stem_err_ = ::stem::gpu_test::rel_error(out, ref); \
    ::stem::gpu_test::report_error(what, stem_err_);                \
    INFO(what << ": rel error " << stem_err_);                      \
    CHECK(::stem::gpu_test::count_nan(out) == 0);                   \
    CHECK(stem_err_ <= (tol));                                      \
  } while (0)
