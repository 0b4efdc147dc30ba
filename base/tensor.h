// Tensor: owns host memory (64-byte aligned) and hands out TensorViews to kernels.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/view.h"

namespace stem {

class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, std::vector<int64_t> shape);  // zero-filled
  static Tensor f32(std::vector<int64_t> shape) { return Tensor(DType::F32, std::move(shape)); }

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool empty() const { return !data_; }
  void* data() const { return data_.get(); }
  template <typename T> T* ptr() const { return static_cast<T*>(data_.get()); }

  TensorView view() const;

 private:
  DType dtype_ = DType::F32;
  std::vector<int64_t> shape_;
  std::shared_ptr<void> data_;
};

}  // namespace stem
