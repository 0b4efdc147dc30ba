// TensorView: what every kernel takes. A pointer, a dtype, a shape and strides (in elements).
// Views own nothing; engine::Tensor owns memory and hands out views.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "kernels/check.h"

namespace stem {

// F8E4M3: float8_e4m3fn (OCP FP8 E4M3: no infinities, NaN 0x7F/0xFF, largest 448); kernels/cpu/fp8.h.
enum class DType : uint8_t { F32, F16, BF16, I32, I64, F8E4M3 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::F8E4M3: return 1;
  }
  return 0;
}
const char* dtype_name(DType t);

constexpr int kMaxDims = 4;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  int ndim = 0;
  int64_t shape[kMaxDims] = {0, 0, 0, 0};
  int64_t stride[kMaxDims] = {0, 0, 0, 0};  // in elements

  TensorView() = default;
  // A contiguous (row-major) view.
  TensorView(void* p, DType t, std::initializer_list<int64_t> dims);

  int64_t numel() const;
  bool contiguous() const;
  bool empty() const { return data == nullptr; }
  int64_t size(int d) const { return shape[d < 0 ? d + ndim : d]; }
  std::string str() const;  // "bf16[4,8]" for messages

  template <typename T> T* ptr() const { return static_cast<T*>(data); }
  // Rows [begin, end) of dimension 0.
  TensorView rows(int64_t begin, int64_t end) const;
  // The same memory seen with another contiguous shape (numel must match).
  TensorView reshape(std::initializer_list<int64_t> dims) const;
};

// Shape checks that launchers use; they name the argument in the message.
void check_view(const TensorView& v, const char* name, DType dtype, int ndim);
void check_contiguous(const TensorView& v, const char* name);

// bf16/f16 <-> f32 conversions used by CPU kernels and loaders.
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);  // round to nearest even
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace stem
