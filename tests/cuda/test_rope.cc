#include <algorithm>
#include <numeric>

#include "kernels/cpu/rope.h"
#include "kernels/cuda/kv_write.cuh"
#include "kernels/cuda/rope.cuh"
#include "tests/cuda/gpu_test_util.h"

using namespace stem;
using gpu_test::DeviceBuffer;

namespace {

// A [tokens, heads, head_dim] view of columns starting at col0 of a [tokens, width] buffer.
TensorView heads_slice(void* base, DType dtype, int64_t tokens, int64_t width, int64_t col0, int64_t heads,
                       int64_t head_dim) {
  TensorView v(static_cast<char*>(base) + col0 * static_cast<int64_t>(dtype_size(dtype)), dtype,
               {tokens, heads, head_dim});
  v.stride[0] = width;
  return v;
}

struct RopeShape {
  int64_t q_heads, kv_heads, head_dim;
  double theta;
  cpu::RopeScaling scaling;
};

}  // namespace

TEST_CASE("cuda rope rotates q and k in place like the CPU twin") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  cpu::RopeScaling llama3;
  llama3.kind = cpu::RopeScaling::Kind::Llama3;
  llama3.factor = 8;
  // SmolLM2-135M (9 q heads over 3 KV heads, D 64) and Llama-3.1-8B (32 over 8, D 128, llama3 scaling).
  const RopeShape shape = GENERATE_COPY(RopeShape{9, 3, 64, 100000, {}}, RopeShape{32, 8, 128, 500000, llama3});
  const int64_t tokens = GENERATE(1, 7, 300);
  const int64_t hq = shape.q_heads, hkv = shape.kv_heads, d = shape.head_dim;
  INFO("tokens " << tokens << " q heads " << hq << " kv heads " << hkv << " head_dim " << d);

  // q and k are slices of a fused [T, (Hq + 2·Hkv)·D] qkv buffer, as the model produces them.
  const int64_t width = (hq + 2 * hkv) * d;
  const std::vector<float> qkv = gpu_test::random_bf16_values(rng, tokens * width, 3.f);
  std::vector<int32_t> positions(static_cast<size_t>(tokens));
  std::uniform_int_distribution<int32_t> pos(0, 131071);  // up to 128K: angles where sincosf must reduce
  for (int32_t& p : positions) p = pos(rng);
  const std::vector<float> inv_freq = cpu::rope_inv_freq(d, shape.theta, shape.scaling);

  std::vector<float> ref = qkv;
  std::vector<int32_t> pos_host = positions;
  std::vector<float> freq_host = inv_freq;
  cpu::rope(heads_slice(ref.data(), DType::F32, tokens, width, 0, hq, d),
            heads_slice(ref.data(), DType::F32, tokens, width, hq * d, hkv, d),
            TensorView(pos_host.data(), DType::I32, {tokens}), TensorView(freq_host.data(), DType::F32, {d / 2}));

  auto d_qkv = gpu_test::upload_bf16(qkv);
  auto d_pos = gpu_test::upload(positions);
  auto d_freq = gpu_test::upload(inv_freq);
  cuda::rope(heads_slice(d_qkv->get(), DType::BF16, tokens, width, 0, hq, d),
             heads_slice(d_qkv->get(), DType::BF16, tokens, width, hq * d, hkv, d), d_pos->view(DType::I32, {tokens}),
             d_freq->view(DType::F32, {d / 2}));
  const std::vector<float> out = gpu_test::download_f32(*d_qkv, DType::BF16, tokens * width);

  // Compare q and k; v (the last Hkv·D columns of each row) must be untouched.
  std::vector<float> out_qk, ref_qk;
  bool v_untouched = true;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < width; ++j) {
      const size_t i = static_cast<size_t>(t * width + j);
      if (j < (hq + hkv) * d) {
        out_qk.push_back(out[i]);
        ref_qk.push_back(ref[i]);
      } else {
        v_untouched = v_untouched && out[i] == qkv[i];
      }
    }
  STEM_CHECK_CLOSE("rope T=" + std::to_string(tokens) + " Hq=" + std::to_string(hq) + " Hkv=" + std::to_string(hkv) +
                       " D=" + std::to_string(d),
                   out_qk, ref_qk, gpu_test::kBf16Tolerance);
  CHECK(v_untouched);
}

TEST_CASE("cuda rope_kv_write is rope then kv_write, bit for bit, and the CPU twin's within bf16") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const auto [hq, hkv, d] = GENERATE(table<int64_t, int64_t, int64_t>({{9, 3, 64}, {32, 8, 128}}));
  const int64_t tokens = GENERATE(1, 7, 300);
  const bool bad_slot = GENERATE(false, true);
  INFO("tokens " << tokens << " q heads " << hq << " kv heads " << hkv << " head_dim " << d << " bad slot " << bad_slot);
  const int64_t width = (hq + 2 * hkv) * d, page_size = 16, pages = (2 * tokens + page_size - 1) / page_size;
  const int64_t cache_elems = pages * page_size * hkv * d;
  const std::vector<float> qkv = gpu_test::random_bf16_values(rng, tokens * width, 3.f);
  const std::vector<float> cache = gpu_test::random_bf16_values(rng, cache_elems);
  std::vector<int32_t> positions(static_cast<size_t>(tokens));
  std::uniform_int_distribution<int32_t> pos(0, 131071);
  for (int32_t& p : positions) p = pos(rng);
  std::vector<int32_t> slots(static_cast<size_t>(pages * page_size));
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(static_cast<size_t>(tokens));
  if (bad_slot) slots[0] = -1;  // skipped by the device ops (the CPU twin refuses it: left out below)
  const std::vector<float> inv_freq = cpu::rope_inv_freq(d, 500000, {});
  auto d_pos = gpu_test::upload(positions);
  auto d_freq = gpu_test::upload(inv_freq);
  auto d_slots = gpu_test::upload(slots);
  const TensorView pos_v = d_pos->view(DType::I32, {tokens}), freq_v = d_freq->view(DType::F32, {d / 2});
  const TensorView slots_v = d_slots->view(DType::I32, {tokens});

  struct Out {
    std::vector<float> qkv, k_cache, v_cache;
  };
  auto run = [&](bool fused) {
    auto d_qkv = gpu_test::upload_bf16(qkv);
    auto d_k = gpu_test::upload_bf16(cache);
    auto d_v = gpu_test::upload_bf16(cache);
    const TensorView q = heads_slice(d_qkv->get(), DType::BF16, tokens, width, 0, hq, d);
    const TensorView k = heads_slice(d_qkv->get(), DType::BF16, tokens, width, hq * d, hkv, d);
    const TensorView v = heads_slice(d_qkv->get(), DType::BF16, tokens, width, (hq + hkv) * d, hkv, d);
    const TensorView kc = d_k->view(DType::BF16, {pages, page_size, hkv, d});
    const TensorView vc = d_v->view(DType::BF16, {pages, page_size, hkv, d});
    if (fused) {
      cuda::rope_kv_write(q, k, v, pos_v, freq_v, kc, vc, slots_v);
    } else {
      cuda::rope(q, k, pos_v, freq_v);
      cuda::kv_write(kc, vc, k, v, slots_v);
    }
    return Out{gpu_test::download_f32(*d_qkv, DType::BF16, tokens * width),
               gpu_test::download_f32(*d_k, DType::BF16, cache_elems),
               gpu_test::download_f32(*d_v, DType::BF16, cache_elems)};
  };
  const Out fused = run(true), apart = run(false);
  const std::string what = "rope_kv_write T=" + std::to_string(tokens) + " Hq=" + std::to_string(hq) +
                           " D=" + std::to_string(d) + (bad_slot ? " bad-slot" : "");
  STEM_CHECK_CLOSE(what + " qkv vs apart", fused.qkv, apart.qkv, 0.0);
  STEM_CHECK_CLOSE(what + " k cache vs apart", fused.k_cache, apart.k_cache, 0.0);
  STEM_CHECK_CLOSE(what + " v cache vs apart", fused.v_cache, apart.v_cache, 0.0);

  // The CPU twin on the tokens with a slot (their rows of qkv, in order).
  std::vector<float> rows, k_ref = cache, v_ref = cache;
  std::vector<int32_t> good_slots, good_pos;
  std::vector<float> got_rows;
  for (int64_t t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;
    good_slots.push_back(slots[t]);
    good_pos.push_back(positions[t]);
    rows.insert(rows.end(), qkv.begin() + t * width, qkv.begin() + (t + 1) * width);
    got_rows.insert(got_rows.end(), fused.qkv.begin() + t * width, fused.qkv.begin() + (t + 1) * width);
  }
  const auto good = static_cast<int64_t>(good_slots.size());
  std::vector<float> freq_host = inv_freq;
  if (good > 0) {
    cpu::rope_kv_write(heads_slice(rows.data(), DType::F32, good, width, 0, hq, d),
                       heads_slice(rows.data(), DType::F32, good, width, hq * d, hkv, d),
                       heads_slice(rows.data(), DType::F32, good, width, (hq + hkv) * d, hkv, d),
                       TensorView(good_pos.data(), DType::I32, {good}), TensorView(freq_host.data(), DType::F32, {d / 2}),
                       TensorView(k_ref.data(), DType::F32, {pages, page_size, hkv, d}),
                       TensorView(v_ref.data(), DType::F32, {pages, page_size, hkv, d}),
                       TensorView(good_slots.data(), DType::I32, {good}));
    STEM_CHECK_CLOSE(what + " qkv vs CPU", got_rows, rows, gpu_test::kBf16Tolerance);
  }
  STEM_CHECK_CLOSE(what + " k cache vs CPU", fused.k_cache, k_ref, gpu_test::kBf16Tolerance);
  STEM_CHECK_CLOSE(what + " v cache vs CPU", fused.v_cache, v_ref, 0.0);  // v is copied: exact
}

// Argument checks run before any CUDA call, so these run (and must pass) without a GPU too.
TEST_CASE("cuda rope rejects bad arguments") {
  alignas(16) static uint16_t q[4 * 4 * 64], k[4 * 2 * 64];
  alignas(16) static float f32s[4 * 4 * 64];
  alignas(16) static int32_t pos[4];
  const TensorView q_v(q, DType::BF16, {4, 4, 64}), k_v(k, DType::BF16, {4, 2, 64});
  const TensorView pos_v(pos, DType::I32, {4}), freq_v(f32s, DType::F32, {32});

  STEM_CHECK_ERROR(cuda::rope(TensorView(f32s, DType::F32, {4, 4, 64}), k_v, pos_v, freq_v), "rope q must be bf16");
  STEM_CHECK_ERROR(cuda::rope(q_v, k_v, pos_v, TensorView(q, DType::BF16, {32})), "inv_freq must be f32");
  STEM_CHECK_ERROR(cuda::rope(q_v, k_v, TensorView(pos, DType::I64, {2}), freq_v), "positions must be i32");
  STEM_CHECK_ERROR(cuda::rope(q_v, k_v, pos_v, TensorView(f32s, DType::F32, {16})), "head_dim / 2");
  STEM_CHECK_ERROR(cuda::rope(q_v, TensorView(k, DType::BF16, {3, 2, 64}), pos_v, freq_v), "tokens, as in q");
  STEM_CHECK_ERROR(cuda::rope(q_v, q_v, pos_v, freq_v), "different tensors");
  STEM_CHECK_ERROR(cuda::rope(TensorView(q, DType::BF16, {4, 4, 40}), TensorView(k, DType::BF16, {4, 2, 40}), pos_v,
                              TensorView(f32s, DType::F32, {20})),
                   "multiple of 16");
  // The fused op checks both ops' arguments.
  alignas(16) static uint16_t kc[2 * 4 * 2 * 64], vc[2 * 4 * 2 * 64];
  const TensorView kc_v(kc, DType::BF16, {2, 4, 2, 64}), vc_v(vc, DType::BF16, {2, 4, 2, 64});
  STEM_CHECK_ERROR(cuda::rope_kv_write(q_v, q_v, k_v, pos_v, freq_v, kc_v, vc_v, pos_v), "different tensors");
  STEM_CHECK_ERROR(cuda::rope_kv_write(q_v, k_v, k_v, pos_v, freq_v, kc_v, TensorView(vc, DType::BF16, {4, 2, 2, 64}),
                                       pos_v),
                   "must match k_cache");
}
