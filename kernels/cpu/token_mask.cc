#include "kernels/cpu/token_mask.h"

#include <cstdint>
#include <limits>

#include "kernels/check.h"
#include "kernels/cpu/rows.h"

namespace stem::cpu {

void check_token_mask_args(const TensorView& logits, const TensorView& masks, const TensorView& mask_of_row) {
  check_rows(logits, "token_mask logits", DType::F32, 2);
  check_packed(masks, "token_mask masks", DType::I32, 2);
  check_packed(mask_of_row, "token_mask mask_of_row", DType::I32, 1);
  const int64_t rows = logits.shape[0], vocab = logits.shape[1];
  check_dim(mask_of_row, "token_mask mask_of_row", 0, rows, "rows, as in logits");
  check_dim(masks, "token_mask masks", 1, (vocab + 31) / 32, "words: ceil(vocabulary / 32)");
}

void apply_token_mask(const TensorView& logits, const TensorView& masks, const TensorView& mask_of_row) {
  check_token_mask_args(logits, masks, mask_of_row);
  const int64_t rows = logits.shape[0], vocab = logits.shape[1], words = masks.shape[1], n_masks = masks.shape[0];
  const int32_t* which = mask_of_row.ptr<int32_t>();
  const auto* bits = reinterpret_cast<const uint32_t*>(masks.ptr<int32_t>());
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t m = which[r];
    STEM_CHECK(m < n_masks, "token_mask: row ", r, " names mask ", m, " of ", n_masks);
    if (m < 0) continue;
    float* x = logits.ptr<float>() + r * row_stride(logits);
    const uint32_t* w = bits + int64_t{m} * words;
    for (int64_t v = 0; v < vocab; ++v)
      if (!((w[v >> 5] >> (v & 31)) & 1u)) x[v] = -std::numeric_limits<float>::infinity();
  }
}

}  // namespace stem::cpu
