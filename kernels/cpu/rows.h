// Row views: the layout every CPU kernel accepts for its activations.
// Dimension 0 (tokens) may have any stride, so a kernel can read or write a slice of a wider
// buffer (q out of a fused qkv projection, gate out of a fused gate_up); the dimensions after
// it must be packed. Index tensors and caches are plain contiguous views instead.
#pragma once
#include <cstdint>

#include "kernels/view.h"

namespace stem::cpu {

// Elements in one row: the product of the dimensions after the first.
inline int64_t row_size(const TensorView& v) {
  int64_t n = 1;
  for (int d = 1; d < v.ndim; ++d) n *= v.shape[d];
  return n;
}

// Distance between rows in elements; a single row has no stride worth checking.
inline int64_t row_stride(const TensorView& v) { return v.shape[0] <= 1 ? row_size(v) : v.stride[0]; }

// Checks dtype and rank, then that rows are packed inside and do not overlap each other.
inline void check_rows(const TensorView& v, const char* name, DType dtype, int ndim) {
  check_view(v, name, dtype, ndim);
  int64_t inner = 1;
  for (int d = ndim - 1; d >= 1; --d) {
    STEM_CHECK(v.shape[d] <= 1 || v.stride[d] == inner, name,
               " must be packed after dimension 0 (only the row stride may differ), got ", v.str());
    inner *= v.shape[d];
  }
  STEM_CHECK(v.shape[0] <= 1 || v.stride[0] >= inner, name, " has row stride ", v.stride[0],
             " smaller than its row of ", inner, " elements, got ", v.str());
}

// A contiguous index or cache tensor of the given dtype and rank.
inline void check_packed(const TensorView& v, const char* name, DType dtype, int ndim) {
  check_view(v, name, dtype, ndim);
  check_contiguous(v, name);
}

inline void check_dim(const TensorView& v, const char* name, int d, int64_t expect, const char* what) {
  STEM_CHECK(v.shape[d] == expect, name, " dimension ", d, " must be ", expect, " (", what, "), got ", v.str());
}

}  // namespace stem::cpu
