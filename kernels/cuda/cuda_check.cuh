// CUDA_CHECK / STEM_CUDA_CHECK_LAUNCH: a failed CUDA runtime call becomes a stem::Error naming
// the call, the error and where it happened. Plain C++ (no device code), so host-only files
// compiled by g++ (tests, the engine) can use it too.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/check.h"

namespace stem::detail {

[[noreturn]] inline void cuda_failed(const char* file, int line, const char* call, cudaError_t err) {
  check_failed(
      file, line, call,
      concat("CUDA error ", static_cast<int>(err), " (", cudaGetErrorName(err), "): ", cudaGetErrorString(err)));
}

}  // namespace stem::detail

#define CUDA_CHECK(call)                                                                                       \
  do {                                                                                                         \
    const cudaError_t stem_cuda_err_ = (call);                                                                 \
    if (stem_cuda_err_ != cudaSuccess) ::stem::detail::cuda_failed(__FILE__, __LINE__, #call, stem_cuda_err_); \
  } while (0)

// After a <<<...>>> launch: a bad configuration shows up here at once; a fault inside the kernel
// shows up at the next synchronising call (that is CUDA's model, not something a launcher can change).
#define STEM_CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
