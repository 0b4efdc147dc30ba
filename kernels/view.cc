#include "kernels/view.h"

#include <cmath>
#include <cstring>
#include <sstream>

namespace stem {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::F8E4M3: return "f8e4m3";
  }
  return "?";
}

TensorView::TensorView(void* p, DType t, std::initializer_list<int64_t> dims) : data(p), dtype(t) {
  STEM_CHECK(dims.size() <= static_cast<size_t>(kMaxDims), "at most ", kMaxDims, " dims");
  ndim = static_cast<int>(dims.size());
  int i = 0;
  for (int64_t d : dims) shape[i++] = d;
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    stride[d] = s;
    s *= shape[d];
  }
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) n *= shape[d];
  return n;
}

bool TensorView::contiguous() const {
  int64_t s = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (shape[d] != 1 && stride[d] != s) return false;
    s *= shape[d];
  }
  return true;
}

std::string TensorView::str() const {
  std::ostringstream os;
  os << dtype_name(dtype) << "[";
  for (int d = 0; d < ndim; ++d) os << (d ? "," : "") << shape[d];
  os << "]";
  return os.str();
}

TensorView TensorView::rows(int64_t begin, int64_t end) const {
  STEM_CHECK(ndim >= 1 && begin >= 0 && begin <= end && end <= shape[0], "rows [", begin, ",", end, ") of ", str());
  TensorView v = *this;
  v.data = static_cast<char*>(data) + begin * stride[0] * static_cast<int64_t>(dtype_size(dtype));
  v.shape[0] = end - begin;
  return v;
}

TensorView TensorView::reshape(std::initializer_list<int64_t> dims) const {
  STEM_CHECK(contiguous(), "reshape needs a contiguous view, got ", str());
  TensorView v(data, dtype, dims);
  STEM_CHECK(v.numel() == numel(), "reshape ", str(), " to ", v.str());
  return v;
}

void check_view(const TensorView& v, const char* name, DType dtype, int ndim) {
  STEM_CHECK(v.data != nullptr, name, " is empty");
  STEM_CHECK(v.dtype == dtype, name, " must be ", dtype_name(dtype), ", got ", v.str());
  STEM_CHECK(v.ndim == ndim, name, " must have ", ndim, " dims, got ", v.str());
}

void check_contiguous(const TensorView& v, const char* name) {
  STEM_CHECK(v.contiguous(), name, " must be contiguous, got ", v.str());
}

float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0x7fc0;
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) { mant <<= 1; --exp; }
      mant &= 0x3ff;
      u = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  int32_t exp = static_cast<int32_t>((u >> 23) & 0xff) - 127 + 15;
  uint32_t mant = u & 0x7fffff;
  if (((u >> 23) & 0xff) == 0xff) return static_cast<uint16_t>(sign | 0x7c00 | (mant ? 0x200 : 0));
  if (exp >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000;
    uint32_t shift = static_cast<uint32_t>(14 - exp);
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t h = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) ++h;
  return static_cast<uint16_t>(h);
}

}  // namespace stem
