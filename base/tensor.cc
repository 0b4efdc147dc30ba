#include "base/tensor.h"

#include <cstdlib>
#include <cstring>

namespace stem {

Tensor::Tensor(DType dtype, std::vector<int64_t> shape) : dtype_(dtype), shape_(std::move(shape)) {
  STEM_CHECK(shape_.size() <= static_cast<size_t>(kMaxDims), "at most ", kMaxDims, " dims");
  size_t bytes = (nbytes() + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes ? bytes : 64);
  STEM_CHECK(p != nullptr, "out of host memory allocating ", bytes, " bytes");
  std::memset(p, 0, bytes);
  data_ = std::shared_ptr<void>(p, std::free);
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

TensorView Tensor::view() const {
  TensorView v;
  v.data = data_.get();
  v.dtype = dtype_;
  v.ndim = static_cast<int>(shape_.size());
  int64_t s = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.shape[d] = shape_[d];
    v.stride[d] = s;
    s *= shape_[d];
  }
  return v;
}

}  // namespace stem
