// Helpers shared by the kernel tests: seeded random data, poisoned outputs, the error metric.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/check.h"
#include "kernels/view.h"

namespace stem::ktest {

// Fresh data every run; STEM_TEST_SEED=<n> replays a failure (tests INFO the seed they used).
inline uint64_t test_seed() {
  if (const char* env = std::getenv("STEM_TEST_SEED")) return std::strtoull(env, nullptr, 10);
  return std::random_device{}();
}

// Uniform in ±[0.05, 1): random sign and magnitude, never zero.
inline std::vector<float> random_floats(std::mt19937_64& rng, int64_t n, float scale = 1.f) {
  std::uniform_real_distribution<float> mag(0.05f, 1.f);
  std::bernoulli_distribution neg(0.5);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = (neg(rng) ? -1.f : 1.f) * mag(rng) * scale;
  return v;
}

inline std::vector<float> poisoned(int64_t n) {
  return std::vector<float>(static_cast<size_t>(n), std::numeric_limits<float>::quiet_NaN());
}

inline int64_t count_nan(const float* x, int64_t n) {
  int64_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad += std::isnan(x[i]) ? 1 : 0;
  return bad;
}

// ‖out − ref‖ / ‖ref‖ over n values; NaN in out makes it NaN, which fails every `<=` check.
inline double rel_error(const float* out, const double* ref, int64_t n) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff += (out[i] - ref[i]) * (out[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  return std::sqrt(diff) / std::sqrt(norm);
}
inline double rel_error(const std::vector<float>& out, const std::vector<double>& ref) {
  return rel_error(out.data(), ref.data(), static_cast<int64_t>(ref.size()));
}

// The message of the stem::Error that f throws, or "<no error>"; any other exception escapes.
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A [rows, cols] view onto columns [col0, col0 + cols) of a [rows, width] buffer.
inline TensorView column_slice(float* base, int64_t rows, int64_t width, int64_t col0, int64_t cols) {
  TensorView v(base + col0, DType::F32, {rows, cols});
  v.stride[0] = width;
  return v;
}

}  // namespace stem::ktest

// Asserts that `expr` throws a stem::Error whose message contains `text`.
#define STEM_CHECK_ERROR(expr, text)                                      \
  do {                                                                    \
    const std::string stem_msg_ = ::stem::ktest::error_of([&] { expr; }); \
    INFO("error: " << stem_msg_);                                         \
    CHECK(::stem::ktest::contains(stem_msg_, text));                      \
  } while (0)
