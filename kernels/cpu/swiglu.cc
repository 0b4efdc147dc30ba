#include "kernels/cpu/swiglu.h"

#include <cmath>

#include "kernels/cpu/rows.h"

namespace stem::cpu {

void swiglu(const TensorView& out, const TensorView& gate, const TensorView& up) {
  check_rows(out, "swiglu out", DType::F32, 2);
  check_rows(gate, "swiglu gate", DType::F32, 2);
  check_rows(up, "swiglu up", DType::F32, 2);
  STEM_CHECK(gate.shape[0] == out.shape[0] && gate.shape[1] == out.shape[1], "swiglu: gate ", gate.str(), " and out ",
             out.str(), " must have the same shape");
  STEM_CHECK(up.shape[0] == out.shape[0] && up.shape[1] == out.shape[1], "swiglu: up ", up.str(), " and out ",
             out.str(), " must have the same shape");
  const int64_t tokens = out.shape[0], inter = out.shape[1];
#pragma omp parallel for if (tokens * inter >= (1 << 18))
  for (int64_t t = 0; t < tokens; ++t) {
    const float* g = gate.ptr<float>() + t * row_stride(gate);
    const float* u = up.ptr<float>() + t * row_stride(up);
    float* o = out.ptr<float>() + t * row_stride(out);
    // For very negative gates e^-x overflows to inf and the quotient is a clean -0, not NaN.
    for (int64_t j = 0; j < inter; ++j) o[j] = g[j] / (1.f + std::exp(-g[j])) * u[j];
  }
}

}  // namespace stem::cpu
