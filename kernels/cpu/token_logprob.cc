#include "kernels/cpu/token_logprob.h"

#include <cmath>
#include <limits>

#include "kernels/cpu/rows.h"

namespace stem::cpu {

void token_logprob(const TensorView& logprob, const TensorView& argmax, const TensorView& logits,
                   const TensorView& targets) {
  check_rows(logits, "token_logprob logits", DType::F32, 2);
  check_packed(targets, "token_logprob targets", DType::I32, 1);
  check_packed(logprob, "token_logprob logprob", DType::F32, 1);
  check_packed(argmax, "token_logprob argmax", DType::I32, 1);
  const int64_t rows = logits.shape[0], vocab = logits.shape[1];
  check_dim(targets, "token_logprob targets", 0, rows, "rows, as in logits");
  check_dim(logprob, "token_logprob logprob", 0, rows, "rows, as in logits");
  check_dim(argmax, "token_logprob argmax", 0, rows, "rows, as in logits");
  STEM_CHECK(vocab > 0, "token_logprob: logits have no columns");
  const int32_t* t = targets.ptr<int32_t>();
  for (int64_t r = 0; r < rows; ++r)
    STEM_CHECK(t[r] < vocab, "token_logprob: row ", r, " has target ", t[r], ", past the vocabulary of ", vocab);
  const int64_t stride = row_stride(logits);
#pragma omp parallel for schedule(static) if (rows * vocab >= (1 << 18))
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = logits.ptr<float>() + r * stride;
    auto value = [&](int64_t v) { return std::isnan(x[v]) ? -std::numeric_limits<float>::infinity() : x[v]; };
    int64_t best = 0;
    for (int64_t v = 1; v < vocab; ++v)
      if (value(v) > value(best)) best = v;
    const double m = value(best);
    double sum = 0;
    for (int64_t v = 0; v < vocab; ++v) sum += std::exp(double{value(v)} - m);
    argmax.ptr<int32_t>()[r] = static_cast<int32_t>(best);
    logprob.ptr<float>()[r] = t[r] < 0 ? 0.f : static_cast<float>(double{value(t[r])} - m - std::log(sum));
  }
}

}  // namespace stem::cpu
