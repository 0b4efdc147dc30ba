// The FP8 KV cache's CPU twins (kernels/cpu/kv_fp8.h): quantization into the slots with a scale per
// (token, KV head) and its round-trip bound, rope + write, the staging plan, and the dequantized
// staging pages.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/fp8.h"
#include "kernels/cpu/kv_fp8.h"
#include "kernels/cpu/rope.h"
#include "tests/catch.h"
#include "tests/kernels/kernel_test_util.h"

using namespace stem;

namespace {

// The round trip's bound, from E4M3 (3 mantissa bits): y = x / s lies in [−448, 448] since
// s = amax / 448. A normal y (|y| ≥ 2^-6) sits in a binade [2^e, 2^(e+1)) of spacing 2^(e−3), so
// rounding to nearest moves it by at most 2^(e−4) ≤ 2^-4·|y|; below 2^-6 (subnormals) the spacing
// is 2^-9, half of it 2^-10. Back in x's units: |x − code·s| ≤ max(2^-4·|x|, 2^-10·s), plus the f32
// roundings of x / s and of code · s (2^-24 each, relative). Ties and the largest value are exact
// cases of the same bound (|x| = amax gives y = 448 exactly, up to the f32 division).
double round_trip_bound(double x, double s) {
  return std::max(std::ldexp(std::fabs(x), -4), std::ldexp(s, -10)) * (1 + 0x1p-21) + std::ldexp(std::fabs(x), -22);
}

}  // namespace

TEST_CASE("kv_write_fp8: each (token, KV head) quantized on its own into its slot, within the E4M3 bound") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t pages = 5, page_size = 4, kv_heads = 2, dim = GENERATE(64, 128), row = kv_heads * dim;
  const std::vector<int32_t> slots = {4 * 4 + 2, 4 * 4 + 3, 1 * 4 + 0, 0 * 4 + 1};
  const auto T = static_cast<int64_t>(slots.size());
  // k, v as slices of a fused buffer; head magnitudes differ by 2^10 so the scales must differ too,
  // and one head of zeros (scale 1, codes 0).
  const int64_t width = 3 * row;
  std::vector<float> qkv = ktest::random_floats(rng, T * width);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < dim; ++j) {
      qkv[t * width + row + dim + j] *= 1024.f;   // k head 1
      qkv[t * width + 2 * row + j] *= 0x1p-12f;   // v head 0
    }
  std::fill_n(qkv.begin() + 2 * width + row, dim, 0.f);  // token 2's k head 0
  TensorView k(qkv.data() + row, DType::F32, {T, kv_heads, dim}), v(qkv.data() + 2 * row, DType::F32, {T, kv_heads, dim});
  k.stride[0] = v.stride[0] = width;
  const int64_t slots_n = pages * page_size;
  std::vector<uint8_t> kc(slots_n * row, 0x7F), vc(slots_n * row, 0x7F);  // NaN codes where nothing is written
  std::vector<float> ks = ktest::poisoned(slots_n * kv_heads), vs = ktest::poisoned(slots_n * kv_heads);
  cpu::kv_write_fp8(TensorView(kc.data(), DType::F8E4M3, {pages, page_size, kv_heads, dim}),
                    TensorView(vc.data(), DType::F8E4M3, {pages, page_size, kv_heads, dim}),
                    TensorView(ks.data(), DType::F32, {pages, page_size, kv_heads}),
                    TensorView(vs.data(), DType::F32, {pages, page_size, kv_heads}), k, v,
                    TensorView(const_cast<int32_t*>(slots.data()), DType::I32, {T}));
  int64_t out_of_bound = 0, wrong_scale = 0, untouched_bad = 0;
  double worst = 0;
  for (int64_t slot = 0; slot < slots_n; ++slot) {
    const auto hit = std::find(slots.begin(), slots.end(), slot);
    if (hit == slots.end()) {
      for (int64_t j = 0; j < row; ++j) untouched_bad += kc[slot * row + j] != 0x7F || vc[slot * row + j] != 0x7F;
      for (int64_t h = 0; h < kv_heads; ++h) untouched_bad += !std::isnan(ks[slot * kv_heads + h]);
      continue;
    }
    const int64_t t = hit - slots.begin();
    for (int kv = 0; kv < 2; ++kv)
      for (int64_t h = 0; h < kv_heads; ++h) {
        const float* x = qkv.data() + t * width + (kv + 1) * row + h * dim;
        float amax = 0;
        for (int64_t j = 0; j < dim; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float s = (kv ? vs : ks)[slot * kv_heads + h];
        wrong_scale += s != (amax == 0 ? 1.f : amax / cpu::kFp8Max);
        for (int64_t j = 0; j < dim; ++j) {
          const double deq = double(cpu::fp8_to_f32((kv ? vc : kc)[slot * row + h * dim + j])) * s;
          const double err = std::fabs(deq - x[j]), bound = round_trip_bound(x[j], s);
          out_of_bound += !(err <= bound);
          worst = std::max(worst, err / bound);
        }
      }
  }
  INFO("worst error / bound " << worst);
  CHECK(out_of_bound == 0);
  CHECK(wrong_scale == 0);
  CHECK(untouched_bad == 0);
  CHECK(worst > 0.1);  // the bound is not loose by orders of magnitude
}

TEST_CASE("kv_write_fp8: a slot outside the cache is refused before anything is written") {
  const int64_t pages = 2, page_size = 4, kv_heads = 1, dim = 64;
  std::vector<float> k(dim, 1.f), v(dim, 1.f);
  std::vector<uint8_t> kc(pages * page_size * dim, 0), vc(kc);
  std::vector<float> ks(pages * page_size, 7.f), vs(ks);
  std::vector<int32_t> slots = {8};
  const auto call = [&] {
    cpu::kv_write_fp8(TensorView(kc.data(), DType::F8E4M3, {pages, page_size, kv_heads, dim}),
                      TensorView(vc.data(), DType::F8E4M3, {pages, page_size, kv_heads, dim}),
                      TensorView(ks.data(), DType::F32, {pages, page_size, kv_heads}),
                      TensorView(vs.data(), DType::F32, {pages, page_size, kv_heads}),
                      TensorView(k.data(), DType::F32, {1, kv_heads, dim}),
                      TensorView(v.data(), DType::F32, {1, kv_heads, dim}), TensorView(slots.data(), DType::I32, {1}));
  };
  CHECK_THROWS_WITH(call(), Catch::Matchers::Contains("slot 8"));
  CHECK(std::all_of(ks.begin(), ks.end(), [](float s) { return s == 7.f; }));
}

TEST_CASE("rope_kv_write_fp8: rope, then the rotated k and v quantized: the codes of kv_write_fp8 of rope's output") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t T = 3, Hq = 4, Hk = 2, D = 64, pages = 2, ps = 4;
  std::vector<float> q = ktest::random_floats(rng, T * Hq * D), k = ktest::random_floats(rng, T * Hk * D),
                     v = ktest::random_floats(rng, T * Hk * D);
  std::vector<float> q2 = q, k2 = k;
  std::vector<int32_t> pos = {0, 17, 4000}, slots = {1, 6, 7};
  const std::vector<float> inv = cpu::rope_inv_freq(D, 10000.0, {});
  auto f32 = [](std::vector<float>& x, std::initializer_list<int64_t> s) { return TensorView(x.data(), DType::F32, s); };
  const TensorView P(pos.data(), DType::I32, {T}), F(const_cast<float*>(inv.data()), DType::F32, {D / 2});
  const TensorView S(slots.data(), DType::I32, {T});
  std::vector<uint8_t> kc(pages * ps * Hk * D), vc(kc.size()), kc2(kc.size()), vc2(kc.size());
  std::vector<float> ks(pages * ps * Hk, 1.f), vs(ks), ks2(ks), vs2(ks);
  auto codes = [&](std::vector<uint8_t>& c) { return TensorView(c.data(), DType::F8E4M3, {pages, ps, Hk, D}); };
  auto scales = [&](std::vector<float>& s) { return TensorView(s.data(), DType::F32, {pages, ps, Hk}); };
  cpu::rope_kv_write_fp8(f32(q, {T, Hq, D}), f32(k, {T, Hk, D}), f32(v, {T, Hk, D}), P, F, codes(kc), codes(vc),
                         scales(ks), scales(vs), S);
  cpu::rope(f32(q2, {T, Hq, D}), f32(k2, {T, Hk, D}), P, F);
  cpu::kv_write_fp8(codes(kc2), codes(vc2), scales(ks2), scales(vs2), f32(k2, {T, Hk, D}), f32(v, {T, Hk, D}), S);
  CHECK(q == q2);
  CHECK(k == k2);
  CHECK(kc == kc2);
  CHECK(vc == vc2);
  CHECK(ks == ks2);
  CHECK(vs == vs2);
}

TEST_CASE("stage_kv_pages: the pages of the sequences with more than min_rows rows, renumbered in order") {
  // Three sequences, 4 pages wide, page size 4: a prefill chunk of 5 rows at kv_len 9 (3 pages),
  // a decode row at kv_len 6 (2 pages), a chunk of 2 rows at kv_len 2 (1 page).
  const std::vector<int32_t> table = {7, 2, 9, -1, /**/ 4, 5, -1, -1, /**/ 11, -1, -1, -1};
  const std::vector<int32_t> kv_lens = {9, 6, 2}, qs = {0, 5, 6, 8};
  const cpu::KvStagePlan all = cpu::stage_kv_pages(table, 4, kv_lens, qs, 4, 0);
  CHECK(all.pages == std::vector<int32_t>{7, 2, 9, 4, 5, 11});
  CHECK(all.page_table == std::vector<int32_t>{0, 1, 2, 0, 3, 4, 0, 0, 5, 0, 0, 0});
  CHECK(all.unstaged == std::vector<int32_t>{0, 0, 0});
  const cpu::KvStagePlan prefill = cpu::stage_kv_pages(table, 4, kv_lens, qs, 4, 1);
  CHECK(prefill.pages == std::vector<int32_t>{7, 2, 9, 11});
  CHECK(prefill.page_table == std::vector<int32_t>{0, 1, 2, 0, 0, 0, 0, 0, 3, 0, 0, 0});
  CHECK(prefill.unstaged == std::vector<int32_t>{0, 1, 0});
  const cpu::KvStagePlan none = cpu::stage_kv_pages(table, 4, kv_lens, qs, 4, 5);
  CHECK(none.pages.empty());
  CHECK(none.unstaged == std::vector<int32_t>{1, 1, 1});
  // `also` (a Stem step's flags) stages a sequence of few rows too.
  const cpu::KvStagePlan stem = cpu::stage_kv_pages(table, 4, kv_lens, qs, 4, 5, {0, 1, 0});
  CHECK(stem.pages == std::vector<int32_t>{4, 5});
  CHECK(stem.page_table == std::vector<int32_t>{0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0});
  CHECK(stem.unstaged == std::vector<int32_t>{1, 0, 1});
  // A sequence without rows this step is neither staged nor computed.
  const std::vector<int32_t> idle_qs = {0, 5, 5, 7};
  CHECK(cpu::stage_kv_pages(table, 4, kv_lens, idle_qs, 4, 0).unstaged == std::vector<int32_t>{0, 0, 0});
  CHECK(cpu::stage_kv_pages(table, 4, kv_lens, idle_qs, 4, 0).pages == std::vector<int32_t>{7, 2, 9, 11});
}

TEST_CASE("dequantize_kv_pages: staging page i holds page pages[i] as code times scale, in f32") {
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const int64_t P = 5, ps = 4, Hk = 2, D = 64, n = P * ps * Hk * D;
  std::vector<uint8_t> kc(n), vc(n);
  for (auto* c : {&kc, &vc})
    for (uint8_t& x : *c) x = static_cast<uint8_t>(rng() % 0x7E | (rng() & 1 ? 0x80 : 0));  // finite codes
  std::vector<float> ks = ktest::random_floats(rng, P * ps * Hk), vs = ktest::random_floats(rng, P * ps * Hk);
  std::vector<int32_t> pages = {3, 0, 3};
  std::vector<float> ko = ktest::poisoned(4 * ps * Hk * D), vo = ktest::poisoned(4 * ps * Hk * D);
  cpu::dequantize_kv_pages(TensorView(ko.data(), DType::F32, {4, ps, Hk, D}), TensorView(vo.data(), DType::F32, {4, ps, Hk, D}),
                           TensorView(kc.data(), DType::F8E4M3, {P, ps, Hk, D}),
                           TensorView(vc.data(), DType::F8E4M3, {P, ps, Hk, D}),
                           TensorView(ks.data(), DType::F32, {P, ps, Hk}), TensorView(vs.data(), DType::F32, {P, ps, Hk}),
                           TensorView(pages.data(), DType::I32, {3}));
  int64_t wrong = 0;
  const int64_t page = ps * Hk * D;
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < page; ++j) {
      const int64_t src = pages[i] * page + j, srow = src / D;
      wrong += ko[i * page + j] != cpu::fp8_to_f32(kc[src]) * ks[srow];
      wrong += vo[i * page + j] != cpu::fp8_to_f32(vc[src]) * vs[srow];
    }
  CHECK(wrong == 0);
  CHECK(ktest::count_nan(ko.data() + 3 * page, page) == page);  // page 3 of the staging: not written
  pages[1] = 5;
  CHECK_THROWS_WITH(cpu::dequantize_kv_pages(TensorView(ko.data(), DType::F32, {4, ps, Hk, D}),
                                             TensorView(vo.data(), DType::F32, {4, ps, Hk, D}),
                                             TensorView(kc.data(), DType::F8E4M3, {P, ps, Hk, D}),
                                             TensorView(vc.data(), DType::F8E4M3, {P, ps, Hk, D}),
                                             TensorView(ks.data(), DType::F32, {P, ps, Hk}),
                                             TensorView(vs.data(), DType::F32, {P, ps, Hk}),
                                             TensorView(pages.data(), DType::I32, {3})),
                    Catch::Matchers::Contains("page 5"));
}
