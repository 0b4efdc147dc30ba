#include <algorithm>
#include <cstring>

#include "kernels/cpu/embedding.h"
#include "tests/catch.h"
#include "tests/kernels/kernel_test_util.h"

using namespace stem;
using stem::ktest::column_slice;

namespace {

constexpr int64_t kVocab = 50, kHidden = 64;
const std::vector<int32_t> kIds = {3, 49, 0, 17, 3, 25, 48, 1, 17};  // repeats and both ends

// The bf16 bits are the top half of the f32 bits.
double widen_bf16(uint16_t h) {
  uint32_t u = uint32_t{h} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

TEST_CASE("embedding gathers f32 rows") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  std::vector<float> table = ktest::random_floats(rng, kVocab * kHidden);
  std::vector<int32_t> ids = kIds;
  const int64_t tokens = static_cast<int64_t>(ids.size());

  SECTION("contiguous out") {
    std::vector<float> out = ktest::poisoned(tokens * kHidden);
    cpu::embedding(TensorView(out.data(), DType::F32, {tokens, kHidden}), TensorView(ids.data(), DType::I32, {tokens}),
                   TensorView(table.data(), DType::F32, {kVocab, kHidden}));
    std::vector<double> ref;
    for (int32_t id : ids)
      for (int64_t j = 0; j < kHidden; ++j) ref.push_back(table[id * kHidden + j]);
    CHECK(ktest::count_nan(out.data(), tokens * kHidden) == 0);
    CHECK(ktest::rel_error(out, ref) == 0.0);
  }
  SECTION("out as a slice of a wider buffer leaves the rest alone") {
    const int64_t width = kHidden + 16;
    std::vector<float> buf = ktest::poisoned(tokens * width);
    cpu::embedding(column_slice(buf.data(), tokens, width, 8, kHidden), TensorView(ids.data(), DType::I32, {tokens}),
                   TensorView(table.data(), DType::F32, {kVocab, kHidden}));
    int64_t wrong = 0;
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t j = 0; j < width; ++j) {
        const float got = buf[t * width + j];
        wrong += (j >= 8 && j < 8 + kHidden) ? got != table[ids[t] * kHidden + j - 8] : !std::isnan(got);
      }
    }
    CHECK(wrong == 0);
  }
}

TEST_CASE("embedding widens bf16 and f16 tables") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const std::vector<float> values = ktest::random_floats(rng, kVocab * kHidden);
  std::vector<int32_t> ids = kIds;
  const int64_t tokens = static_cast<int64_t>(ids.size());
  std::vector<uint16_t> table(values.size());
  std::vector<float> out = ktest::poisoned(tokens * kHidden);
  std::vector<double> ref;

  SECTION("bf16") {
    for (size_t i = 0; i < values.size(); ++i) table[i] = f32_to_bf16(values[i]);
    cpu::embedding(TensorView(out.data(), DType::F32, {tokens, kHidden}), TensorView(ids.data(), DType::I32, {tokens}),
                   TensorView(table.data(), DType::BF16, {kVocab, kHidden}));
    for (int32_t id : ids)
      for (int64_t j = 0; j < kHidden; ++j) ref.push_back(widen_bf16(table[id * kHidden + j]));
  }
  SECTION("f16") {
    for (size_t i = 0; i < values.size(); ++i) table[i] = f32_to_f16(values[i]);
    cpu::embedding(TensorView(out.data(), DType::F32, {tokens, kHidden}), TensorView(ids.data(), DType::I32, {tokens}),
                   TensorView(table.data(), DType::F16, {kVocab, kHidden}));
    for (int32_t id : ids)
      for (int64_t j = 0; j < kHidden; ++j) ref.push_back(f16_to_f32(table[id * kHidden + j]));
  }
  CHECK(ktest::count_nan(out.data(), tokens * kHidden) == 0);
  CHECK(ktest::rel_error(out, ref) == 0.0);
  // The widened values are the originals to within the 16-bit formats' precision.
  double worst = 0;
  for (size_t i = 0; i < ref.size(); ++i)
    worst = std::max(worst, std::abs(ref[i] - values[ids[i / kHidden] * kHidden + i % kHidden]));
  CHECK(worst < 4e-3);
}

TEST_CASE("embedding rejects bad ids, dtypes and shapes") {
  std::mt19937_64 rng(1);
  std::vector<float> table = ktest::random_floats(rng, kVocab * kHidden);
  std::vector<int32_t> ids = {4, 7, 9};
  std::vector<float> out = ktest::poisoned(3 * kHidden);
  const TensorView out_v(out.data(), DType::F32, {3, kHidden}), ids_v(ids.data(), DType::I32, {3});
  const TensorView table_v(table.data(), DType::F32, {kVocab, kHidden});

  SECTION("an id past the vocabulary, named in the message, leaves out untouched") {
    ids[1] = static_cast<int32_t>(kVocab);
    STEM_CHECK_ERROR(cpu::embedding(out_v, ids_v, table_v), "token id 50 at position 1");
    CHECK(ktest::count_nan(out.data(), 3 * kHidden) == 3 * kHidden);
  }
  SECTION("a negative id") {
    ids[2] = -1;
    STEM_CHECK_ERROR(cpu::embedding(out_v, ids_v, table_v), "token id -1");
  }
  SECTION("ids of the wrong dtype") {
    STEM_CHECK_ERROR(cpu::embedding(out_v, TensorView(ids.data(), DType::I64, {1}), table_v), "ids must be i32");
  }
  SECTION("an integer table") {
    STEM_CHECK_ERROR(cpu::embedding(out_v, ids_v, TensorView(table.data(), DType::I32, {kVocab, kHidden})),
                     "f32, bf16 or f16");
  }
  SECTION("hidden sizes that disagree") {
    STEM_CHECK_ERROR(cpu::embedding(out_v, ids_v, TensorView(table.data(), DType::F32, {kVocab * 2, kHidden / 2})),
                     "hidden size");
  }
  SECTION("token counts that disagree") {
    STEM_CHECK_ERROR(cpu::embedding(out_v, TensorView(ids.data(), DType::I32, {2}), table_v), "tokens");
  }
  SECTION("out of the wrong rank") {
    STEM_CHECK_ERROR(cpu::embedding(TensorView(out.data(), DType::F32, {3 * kHidden}), ids_v, table_v),
                     "out must have 2 dims");
  }
}
