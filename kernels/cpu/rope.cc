#include "kernels/cpu/rope.h"

#include <cmath>
#include <numbers>

#include "kernels/cpu/kv_write.h"
#include "kernels/cpu/rows.h"

namespace stem::cpu {

namespace {

// HF: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), every step in fp32.
std::vector<float> default_inv_freq(int64_t head_dim, double theta) {
  std::vector<float> inv_freq(static_cast<size_t>(head_dim / 2));
  const float base = static_cast<float>(theta), dim = static_cast<float>(head_dim);
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const float exponent = static_cast<float>(2 * i) / dim;
    inv_freq[i] = 1.0f / std::pow(base, exponent);
  }
  return inv_freq;
}

// Llama 3.1: wavelengths shorter than original/high_freq_factor keep their frequency, longer than
// original/low_freq_factor are slowed by factor, and the band between blends the two linearly in
// original/wavelen. fp32 like HF (torch computes `c / t` as reciprocal(t) * c).
void apply_llama3_scaling(std::vector<float>& inv_freq, const RopeScaling& s) {
  STEM_CHECK(s.high_freq_factor != s.low_freq_factor, "rope_scaling llama3: high_freq_factor (", s.high_freq_factor,
             ") must differ from low_freq_factor");
  const double old_context = static_cast<double>(s.original_max_position_embeddings);
  const float low_freq_wavelen = static_cast<float>(old_context / s.low_freq_factor);
  const float high_freq_wavelen = static_cast<float>(old_context / s.high_freq_factor);
  const float two_pi = static_cast<float>(2 * std::numbers::pi), factor = static_cast<float>(s.factor);
  const float low = static_cast<float>(s.low_freq_factor);
  const float band = static_cast<float>(s.high_freq_factor - s.low_freq_factor);
  for (float& f : inv_freq) {
    const float wavelen = (1.0f / f) * two_pi;
    if (wavelen < high_freq_wavelen) continue;
    const float slow = f / factor;
    if (wavelen > low_freq_wavelen) {
      f = slow;
      continue;
    }
    const float smooth = ((1.0f / wavelen) * static_cast<float>(old_context) - low) / band;
    f = (1.0f - smooth) * f / factor + smooth * f;
  }
}

}  // namespace

std::vector<float> rope_inv_freq(int64_t head_dim, double theta, const RopeScaling& scaling) {
  STEM_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim must be positive and even, got ", head_dim);
  STEM_CHECK(theta > 0, "rope: rope_theta must be positive, got ", theta);
  std::vector<float> inv_freq = default_inv_freq(head_dim, theta);
  switch (scaling.kind) {
    case RopeScaling::Kind::None:
      break;
    case RopeScaling::Kind::Linear: {
      STEM_CHECK(scaling.factor > 0, "rope_scaling linear: factor must be positive, got ", scaling.factor);
      const float factor = static_cast<float>(scaling.factor);
      for (float& f : inv_freq) f /= factor;
      break;
    }
    case RopeScaling::Kind::Llama3:
      STEM_CHECK(scaling.factor > 0 && scaling.low_freq_factor > 0 && scaling.high_freq_factor > 0 &&
                     scaling.original_max_position_embeddings > 0,
                 "rope_scaling llama3: factor, low/high_freq_factor and original_max_position_embeddings "
                 "must be positive");
      apply_llama3_scaling(inv_freq, scaling);
      break;
  }
  return inv_freq;
}

namespace {

// Rotates each head of one token: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
void rotate_heads(float* x, int64_t heads, int64_t head_dim, const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* lo = x + h * head_dim;
    float* hi = lo + half;
    for (int64_t i = 0; i < half; ++i) {
      const float a = lo[i], b = hi[i];
      lo[i] = a * cos[i] - b * sin[i];
      hi[i] = b * cos[i] + a * sin[i];
    }
  }
}

}  // namespace

void rope(const TensorView& q, const TensorView& k, const TensorView& positions, const TensorView& inv_freq) {
  check_rows(q, "rope q", DType::F32, 3);
  check_rows(k, "rope k", DType::F32, 3);
  check_packed(positions, "rope positions", DType::I32, 1);
  check_packed(inv_freq, "rope inv_freq", DType::F32, 1);
  const int64_t tokens = q.shape[0], head_dim = q.shape[2];
  STEM_CHECK(head_dim % 2 == 0, "rope: head_dim must be even, got q ", q.str());
  check_dim(k, "rope k", 0, tokens, "tokens, as in q");
  check_dim(k, "rope k", 2, head_dim, "head_dim, as in q");
  check_dim(positions, "rope positions", 0, tokens, "tokens, as in q");
  check_dim(inv_freq, "rope inv_freq", 0, head_dim / 2, "head_dim / 2");
  STEM_CHECK(q.data != k.data, "rope: q and k must be different tensors");

  constexpr int64_t kMaxHalf = 512;  // cos/sin of one token live on the stack
  const int64_t half = head_dim / 2;
  STEM_CHECK(half <= kMaxHalf, "rope: head_dim ", head_dim, " is over the supported ", 2 * kMaxHalf);
  const int32_t* pos = positions.ptr<int32_t>();
  const float* freq = inv_freq.ptr<float>();
#pragma omp parallel for if (tokens * (q.shape[1] + k.shape[1]) * head_dim >= (1 << 18))
  for (int64_t t = 0; t < tokens; ++t) {
    float cos[kMaxHalf], sin[kMaxHalf];
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(pos[t]) * freq[i];
      cos[i] = std::cos(angle);
      sin[i] = std::sin(angle);
    }
    rotate_heads(q.ptr<float>() + t * row_stride(q), q.shape[1], head_dim, cos, sin);
    rotate_heads(k.ptr<float>() + t * row_stride(k), k.shape[1], head_dim, cos, sin);
  }
}

void rope_kv_write(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& positions,
                   const TensorView& inv_freq, const TensorView& k_cache, const TensorView& v_cache,
                   const TensorView& slots) {
  rope(q, k, positions, inv_freq);
  kv_write(k_cache, v_cache, k, v, slots);
}

}  // namespace stem::cpu
