// Logits of an approximate model (FP8 weights, an FP8 KV cache) against the exact one's, for the
// bounds of tests/models/test_fp8_model.cc and test_fp8_kv.cc: the relative (Frobenius) error, the
// largest absolute difference and the largest |logit|, and per row whether the top-1 agrees,
// counted apart where the exact model's top-two margin exceeds 2·bound·max(1, largest |logit|)
// (there it must agree).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "base/tensor.h"
#include "tests/test_util.h"

namespace stem::test {

struct LogitComparison {
  double rel = 0, max_diff = 0, max_ref = 0;
  int64_t rows = 0, same_top1 = 0, must_agree = 0, agree = 0;
};

inline int64_t argmax_of(const float* x, int64_t n) { return std::max_element(x, x + n) - x; }

// Checks that every difference is finite.
inline LogitComparison compare_logits(const Tensor& got, const Tensor& ref, double bound_fraction) {
  REQUIRE(got.shape() == ref.shape());
  const int64_t R = ref.shape()[0], V = ref.shape()[1];
  LogitComparison c;
  c.rows = R;
  double num = 0, den = 0;
  int64_t nonfinite = 0;
  for (int64_t i = 0; i < R * V; ++i) {
    const double d = got.ptr<float>()[i] - double(ref.ptr<float>()[i]);
    nonfinite += !std::isfinite(d);
    num += d * d;
    den += double(ref.ptr<float>()[i]) * ref.ptr<float>()[i];
    c.max_diff = std::max(c.max_diff, std::abs(d));
    c.max_ref = std::max(c.max_ref, std::abs(double(ref.ptr<float>()[i])));
  }
  CHECK(nonfinite == 0);
  c.rel = std::sqrt(num / den);
  const double bound = bound_fraction * std::max(1.0, c.max_ref);
  for (int64_t r = 0; r < R; ++r) {
    const float *x = got.ptr<float>() + r * V, *y = ref.ptr<float>() + r * V;
    const int64_t top = argmax_of(y, V);
    double second = -INFINITY;
    for (int64_t v = 0; v < V; ++v)
      if (v != top) second = std::max(second, double(y[v]));
    const bool same = argmax_of(x, V) == top;
    c.same_top1 += same;
    if (y[top] - second > 2 * bound) {
      ++c.must_agree;
      c.agree += same;
    }
  }
  return c;
}

// The checks both FP8 model tests make on one comparison: the relative error and every logit
// within bound_fraction (of the largest |logit|), the top-1 the same wherever the margin says it
// must be, and some error at all (the approximation did run).
inline void check_within(const LogitComparison& c, double bound_fraction) {
  CHECK(c.rel <= bound_fraction);
  CHECK(c.max_diff <= bound_fraction * std::max(1.0, c.max_ref));
  CHECK(c.agree == c.must_agree);
  CHECK(c.rel > 0);
}

}  // namespace stem::test
