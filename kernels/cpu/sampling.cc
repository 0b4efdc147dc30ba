#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "kernels/cpu/rows.h"

namespace stem::cpu {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// NaN never wins (read as -inf); -0 and +0 are one value (one key).
float canonical(float x) { return std::isnan(x) ? kNegInf : (x == 0.0f ? 0.0f : x); }

// Orders floats as unsigned integers: a larger float has a larger key (the GPU's radix select
// works on these bits, so the twin decides with them too).
uint32_t key_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// w = the row's logits, canonical, with the penalties applied (vLLM's order: repetition, then
// presence and frequency).
void penalize(float* w, const float* logits, int64_t V, const SamplingRow& row, const PenaltyToken* pen,
              int64_t count) {
  for (int64_t i = 0; i < V; ++i) w[i] = canonical(logits[i]);
  if (!row.has_penalties()) return;
  for (int64_t j = 0; j < count; ++j) {
    const PenaltyToken& p = pen[j];
    float& l = w[p.id];
    if (row.repetition_penalty != 1.0f && (p.in_prompt || p.output_count > 0))
      l = l > 0 ? l / row.repetition_penalty : l * row.repetition_penalty;
    if (p.output_count > 0) {
      // volatile: two roundings (no fused multiply-add), as the GPU's __fmul_rn/__fadd_rn.
      volatile float freq = row.frequency_penalty * static_cast<float>(p.output_count);
      l -= freq + row.presence_penalty;
    }
  }
}

// The lowest id of the largest value (id 0 for a row of -inf).
int32_t argmax(const float* w, int64_t V) {
  int64_t best = 0;
  for (int64_t i = 1; i < V; ++i)
    if (w[i] > w[best]) best = i;
  return static_cast<int32_t>(best);
}

// The non-greedy draw of the header's definition.
void draw(SampleTrace& t, const float* w, int64_t V, const SamplingRow& row, bool keep_trace) {
  const float m = w[t.token];  // the argmax, already in t.token
  if (m == kNegInf) return;    // nothing to draw from: keep the argmax
  const double inv_t = 1.0 / static_cast<double>(row.temperature);
  thread_local std::vector<double> e;
  thread_local std::vector<uint32_t> keys;
  e.resize(V);
  keys.resize(V);
  for (int64_t i = 0; i < V; ++i) keys[i] = key_of(w[i]);

  uint32_t floor_key = 0;  // kept: key >= floor_key
  if (row.top_k > 0 && row.top_k < V) {
    thread_local std::vector<uint32_t> sorted;
    sorted = keys;
    std::nth_element(sorted.begin(), sorted.begin() + (row.top_k - 1), sorted.end(), std::greater<>());
    floor_key = sorted[row.top_k - 1];
  }
  for (int64_t i = 0; i < V; ++i)
    e[i] = keys[i] >= floor_key ? std::exp((static_cast<double>(w[i]) - m) * inv_t) : 0.0;

  if (row.top_p < 1.0f) {
    thread_local std::vector<std::pair<uint32_t, double>> cand;
    cand.clear();
    double Z = 0;
    for (int64_t i = 0; i < V; ++i)
      if (keys[i] >= floor_key) {
        Z += e[i];
        cand.emplace_back(keys[i], e[i]);
      }
    std::sort(cand.begin(), cand.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    const double target = static_cast<double>(row.top_p) * Z;
    double above = 0;
    uint32_t threshold = cand.back().first;  // if rounding never reaches the target: keep all
    t.top_p_margin = 0;
    for (size_t g = 0; g < cand.size();) {
      double mass = 0;
      size_t end = g;
      for (; end < cand.size() && cand[end].first == cand[g].first; ++end) mass += cand[end].second;
      if (above + mass >= target) {
        threshold = cand[g].first;
        t.top_p_margin = std::min(above + mass - target, target - above) / Z;
        break;
      }
      above += mass;
      g = end;
    }
    floor_key = std::max(floor_key, threshold);
  }

  const bool min_p = row.min_p > 0.0f;
  const double min_e = static_cast<double>(row.min_p);
  auto kept = [&](int64_t i) { return keys[i] >= floor_key && (!min_p || e[i] >= min_e); };
  double total = 0;
  int64_t last = t.token;
  for (int64_t i = 0; i < V; ++i) {
    if (min_p && keys[i] >= floor_key) t.min_p_margin = std::min(t.min_p_margin, std::abs(e[i] - min_e));
    if (kept(i)) {
      total += e[i];
      last = i;
    }
  }
  t.target = sampling_uniform(row.seed, row.step) * total;
  t.token = static_cast<int32_t>(last);
  double cum = 0;
  bool found = false;
  for (int64_t i = 0; i < V; ++i) {
    if (!kept(i)) continue;
    cum += e[i];
    if (!found && t.target < cum) {
      t.token = static_cast<int32_t>(i);
      found = true;
      if (!keep_trace) return;
    }
    if (keep_trace) {
      t.kept.push_back(static_cast<int32_t>(i));
      t.cum.push_back(cum);
    }
  }
}

struct RowResult {
  int32_t token = -1;
  float logprob = 0.0f;
  int32_t top_ids[kMaxTopLogprobs];
  float top_logprobs[kMaxTopLogprobs];
};

SampleTrace run_row(RowResult& out, const float* logits, float* w, int64_t V, const SamplingRow& row,
                    const PenaltyToken* pen, int64_t count, bool keep_trace) {
  penalize(w, logits, V, row, pen, count);
  SampleTrace t;
  t.token = argmax(w, V);
  t.greedy = row.greedy();
  if (!t.greedy) draw(t, w, V, row, keep_trace);
  out.token = t.token;
  std::fill(std::begin(out.top_ids), std::end(out.top_ids), -1);
  std::fill(std::begin(out.top_logprobs), std::end(out.top_logprobs), 0.0f);
  out.logprob = 0.0f;
  if (!row.wants_logprobs()) return t;

  // The model's own distribution: log-softmax of the raw logits, summed in double.
  float mr = kNegInf;
  for (int64_t i = 0; i < V; ++i) mr = std::max(mr, canonical(logits[i]));
  double s = 0;
  for (int64_t i = 0; i < V; ++i) s += std::exp(static_cast<double>(canonical(logits[i])) - mr);
  const double log_sum = std::log(s);
  auto logprob = [&](int64_t i) {
    return static_cast<float>(static_cast<double>(canonical(logits[i])) - mr - log_sum);
  };
  out.logprob = logprob(t.token);
  const int64_t n = std::min<int64_t>(std::min(row.top_logprobs, kMaxTopLogprobs), V);
  if (n > 0) {
    thread_local std::vector<int32_t> idx;
    idx.resize(V);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](int32_t a, int32_t b) {
      const float x = canonical(logits[a]), y = canonical(logits[b]);
      return x > y || (x == y && a < b);
    });
    for (int64_t j = 0; j < n; ++j) {
      out.top_ids[j] = idx[j];
      out.top_logprobs[j] = logprob(idx[j]);
    }
  }
  return t;
}

void check_row(const SamplingRow& r, int64_t row) {
  STEM_CHECK(r.temperature >= 0.0f && std::isfinite(r.temperature), "sample: row ", row, " temperature ",
             r.temperature, " must be a finite number >= 0");
  STEM_CHECK(r.top_p > 0.0f, "sample: row ", row, " top_p ", r.top_p, " must be > 0");
  STEM_CHECK(r.top_logprobs >= 0 && r.top_logprobs <= kMaxTopLogprobs, "sample: row ", row, " top_logprobs ",
             r.top_logprobs, " must be in [0, ", kMaxTopLogprobs, "]");
}

}  // namespace

SampleTrace sample_row_trace(const float* logits, int64_t vocab, const SamplingRow& row,
                             const PenaltyToken* penalties, int64_t count) {
  check_row(row, 0);
  for (int64_t j = 0; j < count; ++j)
    STEM_CHECK(penalties[j].id >= 0 && penalties[j].id < vocab, "sample: penalty token ", penalties[j].id,
               " is outside the vocabulary of ", vocab);
  std::vector<float> w(static_cast<size_t>(vocab));
  RowResult out;
  return run_row(out, logits, w.data(), vocab, row, penalties, count, true);
}

void sample(const SamplingOutputs& out, const TensorView& logits, const SamplingInputs& in,
            const TensorView& scratch) {
  check_rows(logits, "sample logits", DType::F32, 2);
  const int64_t R = logits.shape[0], V = logits.shape[1];
  STEM_CHECK(in.num_rows == R, "sample: ", in.num_rows, " parameter rows for logits ", logits.str());
  check_packed(out.token, "sample token", DType::I32, 1);
  check_packed(out.logprob, "sample logprob", DType::F32, 1);
  check_packed(out.top_ids, "sample top_ids", DType::I32, 2);
  check_packed(out.top_logprobs, "sample top_logprobs", DType::F32, 2);
  check_dim(out.token, "sample token", 0, R, "logit rows");
  check_dim(out.logprob, "sample logprob", 0, R, "logit rows");
  for (const TensorView* v : {&out.top_ids, &out.top_logprobs}) {
    check_dim(*v, "sample top outputs", 0, R, "logit rows");
    check_dim(*v, "sample top outputs", 1, kMaxTopLogprobs, "kMaxTopLogprobs");
  }
  if (!scratch.empty()) {
    check_rows(scratch, "sample scratch", DType::F32, 2);
    STEM_CHECK(scratch.shape[0] == R && scratch.shape[1] == V, "sample: scratch ", scratch.str(),
               " must be [rows, vocab] like logits ", logits.str());
  }
  if (R == 0) return;
  STEM_CHECK(V > 0 && V <= INT32_MAX, "sample: vocabulary of ", V, " tokens");
  STEM_CHECK(in.rows && in.penalty_offsets, "sample: rows and penalty_offsets are required");
  STEM_CHECK(in.penalty_offsets[0] == 0, "sample: penalty_offsets must start at 0");
  for (int64_t r = 0; r < R; ++r) {
    check_row(in.rows[r], r);
    STEM_CHECK(in.penalty_offsets[r + 1] >= in.penalty_offsets[r], "sample: penalty_offsets must not decrease");
    for (int32_t j = in.penalty_offsets[r]; j < in.penalty_offsets[r + 1]; ++j)
      STEM_CHECK(in.penalties[j].id >= 0 && in.penalties[j].id < V, "sample: row ", r, " penalty token ",
                 in.penalties[j].id, " is outside the vocabulary of ", V);
  }

#pragma omp parallel for schedule(dynamic, 1) if (R > 1 && R * V >= (1 << 18))
  for (int64_t r = 0; r < R; ++r) {
    thread_local std::vector<float> own;
    float* w;
    if (scratch.empty()) {
      own.resize(V);
      w = own.data();
    } else {
      w = scratch.ptr<float>() + r * row_stride(scratch);
    }
    const int32_t begin = in.penalty_offsets[r];
    RowResult res;
    run_row(res, logits.ptr<float>() + r * row_stride(logits), w, V, in.rows[r], in.penalties + begin,
            in.penalty_offsets[r + 1] - begin, false);
    out.token.ptr<int32_t>()[r] = res.token;
    out.logprob.ptr<float>()[r] = res.logprob;
    std::copy(std::begin(res.top_ids), std::end(res.top_ids), out.top_ids.ptr<int32_t>() + r * kMaxTopLogprobs);
    std::copy(std::begin(res.top_logprobs), std::end(res.top_logprobs),
              out.top_logprobs.ptr<float>() + r * kMaxTopLogprobs);
  }
}

}  // namespace stem::cpu
