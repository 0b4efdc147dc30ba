#include "bench/eval/eval_calibrate.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <map>

#include "kernels/check.h"

namespace stem::eval {

namespace {

// |{j ≤ i : j < sink or j > i − window}|: the blocks row i keeps whatever the scores.
int64_t always_kept(int64_t i, const StemSettings& st) {
  return (i + 1) - std::max<int64_t>(0, i - st.window_blocks + 1 - st.sink_blocks);
}

double causal(int64_t nb) { return static_cast<double>(nb * (nb + 1) / 2); }

}  // namespace

DensityBounds schedule_density(int64_t tokens, const StemSettings& st) {
  const int64_t nb = stem_num_blocks(tokens, st);
  if (tokens < st.min_prompt_len || nb == 0) return {1, 1};
  double lo = 0, hi = 0;
  for (int64_t i = 0; i < nb; ++i) {
    const int64_t k = stem_row_budget(nb, i, st), a = always_kept(i, st);
    if (k >= i + 1) {
      lo += static_cast<double>(i + 1), hi += static_cast<double>(i + 1);
      continue;
    }
    lo += static_cast<double>(std::max(k, a));
    hi += static_cast<double>(std::min(i + 1, k + a));
  }
  return {lo / causal(nb), hi / causal(nb)};
}

double always_density(int64_t tokens, const StemSettings& st) {
  const int64_t nb = stem_num_blocks(tokens, st);
  if (tokens < st.min_prompt_len || nb == 0) return 1;
  double kept = 0;
  for (int64_t i = 0; i < nb; ++i)
    kept += static_cast<double>(i + 1 > st.sink_blocks + st.window_blocks ? always_kept(i, st) : i + 1);
  return kept / causal(nb);
}

nlohmann::json calibrate(Method& m, int64_t tokens, const std::function<double(const Method&)>& measure) {
  STEM_CHECK(m.knob != Knob::None && m.target > 0, "calibrate: ", m.name, " has no knob or target");
  const auto t0 = std::chrono::steady_clock::now();
  const double target = m.target;
  int runs = 0;
  nlohmann::json j = {{"target", target}, {"tokens", tokens}};
  if (m.knob == Knob::Window) {
    const int64_t nb = stem_num_blocks(tokens, m.settings);
    int64_t best = 1;
    double best_gap = 2;
    for (int64_t w = 1; w <= nb; ++w) {
      m.set_knob(static_cast<double>(w));
      const double gap = std::abs(always_density(tokens, m.settings) - target);
      if (gap < best_gap) best = w, best_gap = gap;
    }
    m.set_knob(static_cast<double>(best));
    j["host_density"] = always_density(tokens, m.settings);
  } else if (m.knob == Knob::BudgetRate) {
    const int64_t nb = stem_num_blocks(tokens, m.settings);
    StemSettings unit = m.settings;
    unit.budget_rate = 1;
    const int64_t ks0 = stem_start_budget(nb, unit);
    auto rate_of = [&](int64_t k) { return (static_cast<double>(k) + 0.5) / static_cast<double>(ks0); };
    std::map<int64_t, double> seen;
    auto f = [&](int64_t k) {
      auto it = seen.find(k);
      if (it != seen.end()) return it->second;
      m.set_knob(rate_of(k));
      ++runs;
      return seen[k] = measure(m);
    };
    // Bracket from the host bounds: f(a) < target <= f(b).
    int64_t a = 0, b = nb;
    for (int64_t k = 1; k <= nb; ++k) {
      m.set_knob(rate_of(k));
      const DensityBounds bd = schedule_density(tokens, m.settings);
      if (bd.hi < target) a = k;
      if (bd.lo >= target) {
        b = k;
        break;
      }
    }
    // The smallest k in (a, b] with f(k) >= target (b itself when none below it is).
    int64_t lo = a, hi = b;
    while (hi - lo > 1) {
      const int64_t mid = (lo + hi) / 2;
      (f(mid) >= target ? hi : lo) = mid;
    }
    int64_t best = hi;
    if (hi - 1 >= 1 && std::abs(f(hi - 1) - target) < std::abs(f(hi) - target)) best = hi - 1;
    m.set_knob(rate_of(best));
    j["k_s"] = best;
    j["bracket"] = {a, b};
  } else {  // threshold: density grows with it
    double lo = 0.05, hi = 1.0, best = hi, best_gap = 2;
    // The lowest threshold first: when even it keeps more than the target (the always-kept blocks,
    // or an envelope that is dense at this length), no bisection can reach it.
    m.set_knob(lo);
    ++runs;
    const double floor_density = measure(m);
    best = lo, best_gap = std::abs(floor_density - target);
    if (floor_density >= target) {
      best_gap = 0;
      j["unreachable"] = true;
      spdlog::warn("calibrate {}: even threshold {} keeps {:.2f}% of the blocks, above the target", m.name, lo,
                   100 * floor_density);
    }
    for (int step = 0; step < 14 && best_gap > 0.002; ++step) {
      const double mid = (lo + hi) / 2;
      m.set_knob(mid);
      ++runs;
      const double d = measure(m);
      if (std::abs(d - target) < best_gap) best = mid, best_gap = std::abs(d - target);
      (d >= target ? hi : lo) = mid;
    }
    m.set_knob(best);
  }
  ++runs;
  const double reached = measure(m);
  // The host's figures must hold for what the model measured: a check of both on every calibration.
  if (m.knob == Knob::Window && std::abs(reached - always_density(tokens, m.settings)) > 1e-9)
    spdlog::warn("calibrate {}: measured density {} but the host computes {} for sink + window", m.name, reached,
                 always_density(tokens, m.settings));
  if (m.knob == Knob::BudgetRate) {
    const DensityBounds bd = schedule_density(tokens, m.settings);
    j["host_bounds"] = {bd.lo, bd.hi};
    if (reached < bd.lo - 1e-9 || reached > bd.hi + 1e-9)
      spdlog::warn("calibrate {}: measured density {} outside the schedule's bounds [{}, {}]", m.name, reached, bd.lo,
                   bd.hi);
  }
  j["knob"] = m.knob_value();
  j["density"] = reached;
  j["model_runs"] = runs;
  j["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  m.calibration = j;
  return j;
}

}  // namespace stem::eval
