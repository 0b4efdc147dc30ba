#include "models/cuda/weights.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <string>

#include "base/weights.h"
#include "kernels/cpu/fp8.h"
#include "models/llama_weights.h"

namespace stem {

namespace {

void copy_to_device(void* dst, const void* src, size_t bytes) {
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Random weights without a device kernel of our own: a pool of N(0, 0.02) bf16 values is made once
// on the host (32 MiB, about 0.1 s) and every tensor is filled by device-to-device copies of pool
// chunks taken at random offsets. An 8B model's 16 GB then fill at copy speed (well under a second)
// where host generation and upload would take tens of seconds. Rows repeat only where two chunks
// happen to start at the same offset; for performance work and finiteness checks that is harmless.
class RandomFiller {
 public:
  explicit RandomFiller(uint64_t seed) : state_(seed ^ 0x5eed5eed5eedull) {
    std::vector<uint16_t> host(kPool);
    for (size_t i = 0; i < kPool; i += 2) {  // Box-Muller: two normals per pair of uniforms
      const double u1 = (static_cast<double>(splitmix64(state_) >> 11) + 1.0) * 0x1.0p-53;
      const double u2 = static_cast<double>(splitmix64(state_) >> 11) * 0x1.0p-53;
      const double r = 0.02 * std::sqrt(-2.0 * std::log(u1)), a = 6.283185307179586 * u2;
      host[i] = f32_to_bf16(static_cast<float>(r * std::cos(a)));
      host[i + 1] = f32_to_bf16(static_cast<float>(r * std::sin(a)));
    }
    pool_ = cudabk::DeviceMemory(kPool * 2, "the random-weight pool");
    CUDA_CHECK(cudaMemcpy(pool_.get(), host.data(), kPool * 2, cudaMemcpyHostToDevice));
  }

  void normal(const TensorView& dst) {
    const size_t n = static_cast<size_t>(dst.numel());
    for (size_t done = 0; done < n;) {
      const size_t len = std::min(kChunk, n - done);
      const size_t start = (splitmix64(state_) % (kPool - kChunk)) & ~size_t{7};
      CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst.data) + done * 2, pool_.bytes_ptr(start * 2), len * 2,
                                 cudaMemcpyDeviceToDevice, nullptr));
      done += len;
    }
  }

  // FP8 weights (codes F8E4M3 [rows, cols], scales f32 [rows]): codes of N(0, 1) values from a
  // pool made once, like the bf16 one, and every scale 0.02, so the values are N(0, 0.02) again.
  void normal_fp8(const TensorView& codes, const TensorView& scales) {
    copy_codes(codes.data, static_cast<size_t>(codes.numel()));
    const std::vector<float> host(static_cast<size_t>(scales.numel()), 0.02f);
    CUDA_CHECK(cudaMemcpy(scales.data, host.data(), host.size() * 4, cudaMemcpyHostToDevice));
  }

  // n codes at dst from the FP8 pool (made on first use).
  void copy_codes(void* dst, size_t n) {
    if (!fp8_pool_.get()) {
      std::vector<uint8_t> host(kPool);
      for (size_t i = 0; i < kPool; i += 2) {
        const double u1 = (static_cast<double>(splitmix64(state_) >> 11) + 1.0) * 0x1.0p-53;
        const double u2 = static_cast<double>(splitmix64(state_) >> 11) * 0x1.0p-53;
        const double r = std::sqrt(-2.0 * std::log(u1)), a = 6.283185307179586 * u2;
        host[i] = cpu::f32_to_fp8(static_cast<float>(r * std::cos(a)));
        host[i + 1] = cpu::f32_to_fp8(static_cast<float>(r * std::sin(a)));
      }
      fp8_pool_ = cudabk::DeviceMemory(kPool, "the random FP8 weight pool");
      CUDA_CHECK(cudaMemcpy(fp8_pool_.get(), host.data(), kPool, cudaMemcpyHostToDevice));
    }
    for (size_t done = 0; done < n;) {
      const size_t len = std::min(kChunk, n - done);
      const size_t start = (splitmix64(state_) % (kPool - kChunk)) & ~size_t{15};
      CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + done, fp8_pool_.bytes_ptr(start), len,
                                 cudaMemcpyDeviceToDevice, nullptr));
      done += len;
    }
  }

  static void ones(const TensorView& dst) {
    const std::vector<uint16_t> host(static_cast<size_t>(dst.numel()), f32_to_bf16(1.f));
    CUDA_CHECK(cudaMemcpy(dst.data, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  }

 private:
  static constexpr size_t kPool = size_t{16} << 20, kChunk = size_t{1} << 20;
  uint64_t state_;
  cudabk::DeviceMemory pool_, fp8_pool_;
};

}  // namespace

void fill_random_bf16(void* dst, size_t count, uint64_t seed) {
  RandomFiller fill(seed);
  fill.normal(TensorView(dst, DType::BF16, {static_cast<int64_t>(count)}));
  CUDA_CHECK(cudaDeviceSynchronize());
}

void fill_random_fp8(void* dst, size_t count, uint64_t seed) {
  RandomFiller fill(seed);
  fill.copy_codes(dst, count);
  CUDA_CHECK(cudaDeviceSynchronize());
}

CudaWeights::CudaWeights(const ModelConfig& c, const WeightStore* store, uint64_t seed, bool fp8) : fp8_(fp8) {
  STEM_CHECK(c.head_dim % 2 == 0 && c.hidden_size > 0 && c.vocab_size > 0, "CUDA backend: bad model shape");
  const bool tied = lm_head_tied(c, store);
  const std::vector<WeightSpec> table = llama_weight_table(c, tied, *this);
  const std::optional<DType> codes = fp8 ? std::optional(DType::F8E4M3) : std::nullopt;
  arena_ = cudabk::DeviceMemory(place_weights(c, table, *this, DType::BF16, nullptr, codes), "the model weights");
  place_weights(c, table, *this, DType::BF16, arena_.bytes_ptr(), codes);

  if (store) {
    load_weights(table, *this, c, *store, copy_to_device);
  } else {
    RandomFiller fill(seed);
    for (const WeightSpec& s : table) {
      if (s.init == WeightInit::Ones)
        RandomFiller::ones(*s.dst);
      else if (s.scale && !s.scale->empty())
        fill.normal_fp8(*s.dst, *s.scale);
      else
        fill.normal(*s.dst);
    }
    CUDA_CHECK(cudaDeviceSynchronize());  // the pool goes when `fill` does
    const std::vector<float> inv = rope_frequencies(c);
    copy_to_device(inv_freq.data, inv.data(), inv.size() * sizeof(float));
  }

  step_read_bytes_ = tied ? view_bytes(lm_head) : 0;
  for (const WeightSpec& s : table)
    if (s.per_step) step_read_bytes_ += view_bytes(*s.dst) + (s.scale ? view_bytes(*s.scale) : 0);
}

}  // namespace stem
