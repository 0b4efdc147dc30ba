// The FP8 KV cache's CUDA kernels (kernels/cuda/kv_fp8.cuh) against their CPU twins
// (kernels/cpu/kv_fp8.h): rope_kv_write_fp8's codes and scales bit for bit (both divide in IEEE f32
// and round to nearest even with saturation: the quantize op's arithmetic, held bit for bit by
// test_fp8.cc), the staging dequantization bit for bit (code · scale in f32, one bf16 rounding),
// and paged_decode_fp8 (alone, with `only`, and composed with the staging and paged_prefill as
// the backend runs a mixed step; each of its kernels, cuda::Fp8DecodeKernel, over K and V values
// of ordinary, tiny and large magnitudes) against cpu::paged_attention over the dequantized cache,
// within the bf16 attention tests' tolerance (MMAs on values that are exactly the codes; the scales
// applied in f32).
#include <algorithm>
#include <cstring>
#include <numeric>

#include "kernels/cpu/fp8.h"
#include "kernels/cpu/kv_fp8.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/kv_fp8.cuh"
#include "kernels/cuda/rope.cuh"
#include "tests/cuda/test_attention_common.h"

using namespace stem;
using attn_test::PagedStep;
using attn_test::Seq;
using gpu_test::DeviceBuffer;

namespace {

TensorView heads_slice(void* base, DType dtype, int64_t tokens, int64_t width, int64_t col0, int64_t heads,
                       int64_t head_dim) {
  TensorView v(static_cast<char*>(base) + col0 * static_cast<int64_t>(dtype_size(dtype)), dtype,
               {tokens, heads, head_dim});
  v.stride[0] = width;
  return v;
}


// A step's cache as an FP8 cache on the host: every slot row quantized by the twin (rows of NaN,
// the slots no sequence owns, get NaN scales and codes: the kernels must not read them).
struct Fp8Cache {
  std::vector<uint8_t> kc, vc;
  std::vector<float> ks, vs;
  std::vector<float> k_deq, v_deq;  // code · scale, f32
  std::unique_ptr<DeviceBuffer> d_kc, d_vc, d_ks, d_vs;
  int64_t P, ps, hkv, d;

  // magnitude: the step's K and V values times this before they are quantized (the scales follow).
  explicit Fp8Cache(const PagedStep& s, float magnitude = 1.f) : P(s.pages), ps(s.page_size), hkv(s.hkv), d(s.d) {
    const int64_t rows = P * ps * hkv;
    kc.resize(rows * d);
    vc.resize(rows * d);
    ks.resize(rows);
    vs.resize(rows);
    for (auto [x, c, sc] : {std::tuple{&s.k_cache, &kc, &ks}, {&s.v_cache, &vc, &vs}}) {
      std::vector<float> values(*x);
      for (float& v : values) v *= magnitude;
      cpu::quantize_rows_fp8(TensorView(c->data(), DType::F8E4M3, {rows, d}), TensorView(sc->data(), DType::F32, {rows}),
                             TensorView(values.data(), DType::F32, {rows, d}));
    }
    k_deq.resize(rows * d);
    v_deq.resize(rows * d);
    std::vector<int32_t> all(static_cast<size_t>(P));
    std::iota(all.begin(), all.end(), 0);
    cpu::dequantize_kv_pages(TensorView(k_deq.data(), DType::F32, {P, ps, hkv, d}),
                             TensorView(v_deq.data(), DType::F32, {P, ps, hkv, d}), k_view(kc), k_view(vc),
                             s_view(ks), s_view(vs), TensorView(all.data(), DType::I32, {P}));
    d_kc = gpu_test::upload(kc);
    d_vc = gpu_test::upload(vc);
    d_ks = gpu_test::upload(ks);
    d_vs = gpu_test::upload(vs);
  }
  TensorView k_view(std::vector<uint8_t>& c) const { return TensorView(c.data(), DType::F8E4M3, {P, ps, hkv, d}); }
  TensorView s_view(std::vector<float>& x) const { return TensorView(x.data(), DType::F32, {P, ps, hkv}); }
  TensorView dk() const { return d_kc->view(DType::F8E4M3, {P, ps, hkv, d}); }
  TensorView dv() const { return d_vc->view(DType::F8E4M3, {P, ps, hkv, d}); }
  TensorView dks() const { return d_ks->view(DType::F32, {P, ps, hkv}); }
  TensorView dvs() const { return d_vs->view(DType::F32, {P, ps, hkv}); }
};

// cpu::paged_attention over the dequantized cache: the twin of every FP8 attention path.
std::vector<float> fp8_reference(const PagedStep& s, const Fp8Cache& c, float scale, int64_t window) {
  std::vector<float> qh(static_cast<size_t>(s.out_size())), out(qh.size(), NAN);
  for (int64_t t = 0; t < s.tokens; ++t) std::copy_n(s.q.begin() + t * s.q_width, s.hq * s.d, qh.begin() + t * s.hq * s.d);
  std::vector<float> kd = c.k_deq, vd = c.v_deq;
  std::vector<int32_t> table = s.page_table, lens = s.kv_lens, start = s.query_start;
  const auto S = static_cast<int64_t>(s.seqs.size());
  cpu::paged_attention(TensorView(out.data(), DType::F32, {s.tokens, s.hq, s.d}),
                       TensorView(qh.data(), DType::F32, {s.tokens, s.hq, s.d}),
                       TensorView(kd.data(), DType::F32, {s.pages, s.page_size, s.hkv, s.d}),
                       TensorView(vd.data(), DType::F32, {s.pages, s.page_size, s.hkv, s.d}),
                       TensorView(table.data(), DType::I32, {S, s.max_pages}), TensorView(lens.data(), DType::I32, {S}),
                       TensorView(start.data(), DType::I32, {S + 1}), scale, window);
  return out;
}

// Sets the FP8 decode kernel for one test and puts the previous one back.
struct Fp8DecodeScope {
  cuda::Fp8DecodeKernel before = cuda::fp8_decode_kernel();
  explicit Fp8DecodeScope(cuda::Fp8DecodeKernel k) { cuda::set_fp8_decode_kernel(k); }
  ~Fp8DecodeScope() { cuda::set_fp8_decode_kernel(before); }
};
const char* kernel_name(cuda::Fp8DecodeKernel k) {
  return k == cuda::Fp8DecodeKernel::kWiden ? "widen" : k == cuda::Fp8DecodeKernel::kRegisters ? "regs" : "regs-int";
}

struct DecodeCase {
  const char* name;
  int64_t hq, hkv, d, page_size;
  std::vector<Seq> seqs;
  int64_t window;
};

const std::vector<DecodeCase> kDecodeCases = {
    {"gqa4 d128 page16 8K", 32, 8, 128, 16, {{1, 1}, {37, 1}, {1000, 1}, {8192, 1}, {5000, 0}}, 0},
    {"gqa3 d64 page32 few rows", 12, 4, 64, 32, {{300, 5}, {1200, 3}, {64, 2}}, 0},
    {"gqa4 d64 page8 window100", 8, 2, 64, 8, {{2000, 1}, {150, 4}}, 100},
    {"gqa4 d128 page4 8K batch", 8, 2, 128, 4, {{8000, 2}, {8191, 1}, {4097, 4}}, 0},
    {"gqa1 d128 page1", 4, 4, 128, 1, {{700, 2}, {33, 1}}, 0},
};

}  // namespace

TEST_CASE("cuda rope_kv_write_fp8: rope as rope_kv_write, codes and scales as the twin's, bit for bit") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const auto [kv_heads, head_dim] = GENERATE(table<int64_t, int64_t>({{2, 64}, {8, 128}}));
  const int64_t tokens = GENERATE(1, 7, 300);
  INFO("tokens " << tokens << " kv heads " << kv_heads << " head_dim " << head_dim);
  const int64_t q_heads = 4 * kv_heads, ps = 16, pages = (2 * tokens + ps - 1) / ps, slots_n = pages * ps;
  const int64_t row = kv_heads * head_dim, width = (q_heads + 2 * kv_heads) * head_dim;
  std::vector<float> qkv = gpu_test::random_bf16_values(rng, tokens * width, 4.f);
  for (int64_t j = 0; j < head_dim; ++j) qkv[q_heads * head_dim + j] = 0.f;  // token 0's k head 0: scale 1, codes 0
  std::vector<int32_t> positions(static_cast<size_t>(tokens)), slots(static_cast<size_t>(slots_n));
  for (int64_t t = 0; t < tokens; ++t) positions[t] = static_cast<int32_t>((t * 37) % 5000);
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(static_cast<size_t>(tokens));
  if (tokens > 1) slots[1] = -1;  // skipped
  const std::vector<float> inv = cpu::rope_inv_freq(head_dim, 500000.0, {});
  auto d_inv = gpu_test::upload(inv);
  auto d_pos = gpu_test::upload(positions);
  auto d_slots = gpu_test::upload(slots);
  auto a_qkv = gpu_test::upload_bf16(qkv), b_qkv = gpu_test::upload_bf16(qkv);
  auto a_k = std::make_unique<DeviceBuffer>(slots_n * row * 2), a_v = std::make_unique<DeviceBuffer>(slots_n * row * 2);
  // The FP8 cache starts full of sentinels that must survive wherever nothing was written.
  std::vector<uint8_t> kc0(slots_n * row), vc0(slots_n * row);
  for (auto* c : {&kc0, &vc0})
    for (uint8_t& x : *c) x = static_cast<uint8_t>(rng() % 0x7E);
  std::vector<float> ks0(slots_n * kv_heads, -3.f), vs0(slots_n * kv_heads, -5.f);
  auto d_kc = gpu_test::upload(kc0), d_vc = gpu_test::upload(vc0), d_ks = gpu_test::upload(ks0), d_vs = gpu_test::upload(vs0);
  auto q_of = [&](DeviceBuffer& b) { return heads_slice(b.get(), DType::BF16, tokens, width, 0, q_heads, head_dim); };
  auto k_of = [&](DeviceBuffer& b) {
    return heads_slice(b.get(), DType::BF16, tokens, width, q_heads * head_dim, kv_heads, head_dim);
  };
  auto v_of = [&](DeviceBuffer& b) {
    return heads_slice(b.get(), DType::BF16, tokens, width, (q_heads + kv_heads) * head_dim, kv_heads, head_dim);
  };
  const TensorView P = d_pos->view(DType::I32, {tokens}), F = d_inv->view(DType::F32, {head_dim / 2});
  const TensorView S = d_slots->view(DType::I32, {tokens});
  cuda::rope_kv_write(q_of(*a_qkv), k_of(*a_qkv), v_of(*a_qkv), P, F,
                      a_k->view(DType::BF16, {pages, ps, kv_heads, head_dim}),
                      a_v->view(DType::BF16, {pages, ps, kv_heads, head_dim}), S, nullptr);
  cuda::rope_kv_write_fp8(q_of(*b_qkv), k_of(*b_qkv), v_of(*b_qkv), P, F,
                          d_kc->view(DType::F8E4M3, {pages, ps, kv_heads, head_dim}),
                          d_vc->view(DType::F8E4M3, {pages, ps, kv_heads, head_dim}),
                          d_ks->view(DType::F32, {pages, ps, kv_heads}), d_vs->view(DType::F32, {pages, ps, kv_heads}),
                          S, nullptr);
  // q and k rotated in place exactly as the bf16 op rotates them.
  const std::vector<float> a = gpu_test::download_f32(*a_qkv, DType::BF16, tokens * width);
  const std::vector<float> b = gpu_test::download_f32(*b_qkv, DType::BF16, tokens * width);
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);

  // The twin: kv_write_fp8 of the rotated bf16 k and of v, on the tokens with valid slots.
  std::vector<uint8_t> kc = kc0, vc = vc0;
  std::vector<float> ks = ks0, vs = vs0;
  std::vector<int32_t> good_slots;
  std::vector<float> good;
  for (int64_t t = 0; t < tokens; ++t) {
    if (slots[t] < 0) continue;
    good_slots.push_back(slots[t]);
    good.insert(good.end(), a.begin() + t * width, a.begin() + (t + 1) * width);
  }
  const auto G = static_cast<int64_t>(good_slots.size());
  cpu::kv_write_fp8(TensorView(kc.data(), DType::F8E4M3, {pages, ps, kv_heads, head_dim}),
                    TensorView(vc.data(), DType::F8E4M3, {pages, ps, kv_heads, head_dim}),
                    TensorView(ks.data(), DType::F32, {pages, ps, kv_heads}),
                    TensorView(vs.data(), DType::F32, {pages, ps, kv_heads}),
                    heads_slice(good.data(), DType::F32, G, width, q_heads * head_dim, kv_heads, head_dim),
                    heads_slice(good.data(), DType::F32, G, width, (q_heads + kv_heads) * head_dim, kv_heads, head_dim),
                    TensorView(good_slots.data(), DType::I32, {G}));
  const std::vector<uint8_t> gkc = d_kc->download<uint8_t>(kc.size()), gvc = d_vc->download<uint8_t>(vc.size());
  const std::vector<float> gks = d_ks->download<float>(ks.size()), gvs = d_vs->download<float>(vs.size());
  int64_t code_diff = 0, scale_diff = 0;
  for (size_t i = 0; i < kc.size(); ++i) code_diff += (gkc[i] != kc[i]) + (gvc[i] != vc[i]);
  for (size_t i = 0; i < ks.size(); ++i) scale_diff += (gks[i] != ks[i]) + (gvs[i] != vs[i]);
  CHECK(code_diff == 0);
  CHECK(scale_diff == 0);
  CHECK(gks[slots[0] * kv_heads] == 1.f);  // the head of zeros
}

TEST_CASE("cuda dequantize_kv_pages: the twin's code times scale, rounded to bf16 once, bit for bit") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const auto [ps, hkv, d] = GENERATE(table<int64_t, int64_t, int64_t>({{16, 2, 64}, {1, 8, 128}, {64, 1, 128}}));
  const int64_t P = 9, rows = P * ps * hkv;
  std::vector<uint8_t> kc(rows * d), vc(rows * d);
  for (auto* c : {&kc, &vc})
    for (uint8_t& x : *c) x = static_cast<uint8_t>(rng() % 0x7E | (rng() & 1 ? 0x80 : 0));
  std::vector<float> ks = gpu_test::random_bf16_values(rng, rows, 3.f), vs = gpu_test::random_bf16_values(rng, rows);
  for (float& s : ks) s = std::fabs(s) * 1.37f;  // scales that are not bf16 values
  std::vector<int32_t> pages = {4, 0, 8, 4, 2};
  const auto N = static_cast<int64_t>(pages.size());
  auto d_kc = gpu_test::upload(kc), d_vc = gpu_test::upload(vc), d_ks = gpu_test::upload(ks), d_vs = gpu_test::upload(vs);
  auto d_pages = gpu_test::upload(pages);
  auto d_ko = std::make_unique<DeviceBuffer>((N + 1) * ps * hkv * d * 2), d_vo = std::make_unique<DeviceBuffer>((N + 1) * ps * hkv * d * 2);
  cuda::dequantize_kv_pages(d_ko->view(DType::BF16, {N + 1, ps, hkv, d}), d_vo->view(DType::BF16, {N + 1, ps, hkv, d}),
                            d_kc->view(DType::F8E4M3, {P, ps, hkv, d}), d_vc->view(DType::F8E4M3, {P, ps, hkv, d}),
                            d_ks->view(DType::F32, {P, ps, hkv}), d_vs->view(DType::F32, {P, ps, hkv}),
                            d_pages->view(DType::I32, {N}), nullptr);
  std::vector<float> ko(N * ps * hkv * d), vo(ko.size());
  cpu::dequantize_kv_pages(TensorView(ko.data(), DType::F32, {N, ps, hkv, d}), TensorView(vo.data(), DType::F32, {N, ps, hkv, d}),
                           TensorView(kc.data(), DType::F8E4M3, {P, ps, hkv, d}),
                           TensorView(vc.data(), DType::F8E4M3, {P, ps, hkv, d}),
                           TensorView(ks.data(), DType::F32, {P, ps, hkv}), TensorView(vs.data(), DType::F32, {P, ps, hkv}),
                           TensorView(pages.data(), DType::I32, {N}));
  const std::vector<float> gk = gpu_test::download_f32(*d_ko, DType::BF16, N * ps * hkv * d);
  const std::vector<float> gv = gpu_test::download_f32(*d_vo, DType::BF16, N * ps * hkv * d);
  const std::vector<float> want_k = gpu_test::round_to_bf16(ko), want_v = gpu_test::round_to_bf16(vo);
  int64_t diff = 0;
  for (size_t i = 0; i < ko.size(); ++i) diff += (gk[i] != want_k[i]) + (gv[i] != want_v[i]);
  CHECK(diff == 0);
}

TEST_CASE("cuda paged_decode_fp8 matches the CPU twin over the dequantized cache") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const auto kernel = GENERATE(cuda::Fp8DecodeKernel::kWiden, cuda::Fp8DecodeKernel::kRegisters,
                               cuda::Fp8DecodeKernel::kRegistersInt);
  const Fp8DecodeScope scope(kernel);
  const size_t which = GENERATE(0, 1, 2, 3, 4);
  REQUIRE(which < kDecodeCases.size());
  const DecodeCase& c = kDecodeCases[which];
  // K and V of every size the cache meets: tiny values (scales near 1e-7, the probabilities times
  // the value scales far below f16's normal range without the kernels' 2^8), and large ones.
  const float magnitude = GENERATE(1.f, 1e-4f, 300.f);
  INFO(c.name << ", kernel " << kernel_name(kernel) << ", values x" << magnitude);
  for (const Seq& s : c.seqs) REQUIRE(s.rows <= cuda::decode_max_rows(c.hq, c.hkv));
  PagedStep step(rng, c.hq, c.hkv, c.d, c.page_size, c.seqs, 2.f);
  const Fp8Cache fp8(step, magnitude);
  const float scale = attn_test::default_scale(c.d);
  const std::vector<float> ref = fp8_reference(step, fp8, scale, c.window);
  step.d_out->poison();
  cuda::paged_decode_fp8(step.out_view(), step.q_view(), fp8.dk(), fp8.dv(), fp8.dks(), fp8.dvs(), step.table_view(),
                         step.lens_view(), step.start_view(), scale, c.window, nullptr);
  const std::string what = std::string("attention_decode_fp8 ") + kernel_name(kernel) + " x" + std::to_string(magnitude) + " " + c.name;
  STEM_CHECK_CLOSE(what, step.download_out(), ref, gpu_test::kBf16Tolerance);

  // `only`: the first sequence skipped, its rows left as they were (NaN); the others computed.
  std::vector<int32_t> only(c.seqs.size(), 1);
  only[0] = 0;
  auto d_only = gpu_test::upload(only);
  step.d_out->poison();
  cuda::paged_decode_fp8(step.out_view(), step.q_view(), fp8.dk(), fp8.dv(), fp8.dks(), fp8.dvs(), step.table_view(),
                         step.lens_view(), step.start_view(), scale, c.window, nullptr,
                         d_only->view(DType::I32, {static_cast<int64_t>(only.size())}));
  const std::vector<float> out = step.download_out();
  const int64_t row = c.hq * c.d, first = step.query_start[1] * row;
  CHECK(gpu_test::count_nan(std::vector<float>(out.begin(), out.begin() + first)) == first);
  STEM_CHECK_CLOSE("only: " + what, std::vector<float>(out.begin() + first, out.end()),
                   std::vector<float>(ref.begin() + first, ref.end()), gpu_test::kBf16Tolerance);
}

TEST_CASE("cuda FP8 mixed step: staged prefill (paged_prefill) and FP8 decode rows, as the backend runs it") {
  STEM_REQUIRE_GPU();
  const uint64_t seed = ktest::test_seed();
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  const auto kernel = GENERATE(cuda::Fp8DecodeKernel::kWiden, cuda::Fp8DecodeKernel::kRegisters,
                               cuda::Fp8DecodeKernel::kRegistersInt);
  const Fp8DecodeScope scope(kernel);
  const int64_t d = GENERATE(64, 128);
  const int64_t window = GENERATE(0, 150);
  const int64_t hq = 8, hkv = 2;
  // decode_max_rows(8, 2) = 4: rows of 1 and 3 decode from the codes, chunks of 300 and 129 prefill
  // from the staging.
  PagedStep step(rng, hq, hkv, d, 16, {{900, 1}, {700, 300}, {40, 3}, {129, 129}, {2000, 0}}, 2.f);
  const Fp8Cache fp8(step);
  const float scale = attn_test::default_scale(d);
  const std::vector<float> ref = fp8_reference(step, fp8, scale, window);
  const cpu::KvStagePlan plan = cpu::stage_kv_pages(step.page_table, static_cast<int32_t>(step.max_pages), step.kv_lens,
                                                    step.query_start, static_cast<int32_t>(step.page_size),
                                                    cuda::decode_max_rows(hq, hkv));
  const auto N = static_cast<int64_t>(plan.pages.size()), S = static_cast<int64_t>(step.seqs.size());
  auto d_pages = gpu_test::upload(plan.pages), d_table = gpu_test::upload(plan.page_table);
  const int64_t cap = N + 3;  // the staging is larger than the step needs, as the backend's is
  auto d_sk = std::make_unique<DeviceBuffer>(cap * 16 * hkv * d * 2), d_sv = std::make_unique<DeviceBuffer>(cap * 16 * hkv * d * 2);
  const TensorView sk = d_sk->view(DType::BF16, {cap, 16, hkv, d}), sv = d_sv->view(DType::BF16, {cap, 16, hkv, d});
  step.d_out->poison();
  cuda::dequantize_kv_pages(sk, sv, fp8.dk(), fp8.dv(), fp8.dks(), fp8.dvs(), d_pages->view(DType::I32, {N}), nullptr);
  cuda::paged_prefill(step.out_view(), step.q_view(), sk, sv, d_table->view(DType::I32, {S, step.max_pages}),
                      step.lens_view(), step.start_view(), scale, window, nullptr);
  cuda::paged_decode_fp8(step.out_view(), step.q_view(), fp8.dk(), fp8.dv(), fp8.dks(), fp8.dvs(), step.table_view(),
                         step.lens_view(), step.start_view(), scale, window, nullptr);
  STEM_CHECK_CLOSE(std::string("attention_fp8_mixed ") + kernel_name(kernel) + " d" + std::to_string(d) + " window " + std::to_string(window),
                   step.download_out(), ref, gpu_test::kBf16Tolerance);
}
