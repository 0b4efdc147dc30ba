// Programmatic dependent launch (Hopper): the kernels of a decode step are short and memory-bound,
// and between two of them the card idles through the second's launch and ramp while the first's
// last blocks finish. A kernel launched with launch_pdl may start while the kernel before it on the
// stream is still running; it must call pdl_wait() before it reads anything an earlier kernel
// wrote (what it reads that no kernel writes, weights, it may fetch before), and every block must
// reach pdl_wait() before it exits, so that a kernel never finishes before its predecessor (the
// next one waits for this one only). pdl_launch_dependents() lets the next kernel start launching
// its blocks. Both are no-ops in a kernel launched the ordinary way and below sm_90.
//
// STEM_PDL=0 in the environment launches every kernel the ordinary way (for A/B timing).
#pragma once
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "kernels/cuda/cuda_check.cuh"

namespace stem::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether launch_pdl asks for programmatic launch: sm_90 or newer on the current device, and
// STEM_PDL not "0". Read once per device.
inline bool pdl_enabled() {
  static const bool env_on = [] {
    const char* v = std::getenv("STEM_PDL");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  if (!env_on) return false;
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  static int major_of[64] = {};
  if (dev < 0 || dev >= 64) return false;
  if (major_of[dev] == 0) CUDA_CHECK(cudaDeviceGetAttribute(&major_of[dev], cudaDevAttrComputeCapabilityMajor, dev));
  return major_of[dev] >= 9;
}

// kernel<<<grid, block, smem, stream>>>(args...), allowed to overlap the previous kernel on the
// stream when pdl_enabled() (the kernel keeps the rules above).
template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = &attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

}  // namespace stem::cuda
