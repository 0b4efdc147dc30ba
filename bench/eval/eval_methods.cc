#include "bench/eval/eval_methods.h"

#include <cmath>

#include "kernels/check.h"

namespace stem::eval {

double Method::knob_value() const {
  switch (knob) {
    case Knob::BudgetRate: return settings.budget_rate;
    case Knob::Threshold: return settings.threshold;
    case Knob::Window: return static_cast<double>(settings.window_blocks);
    case Knob::None: break;
  }
  return 0;
}

void Method::set_knob(double value) {
  switch (knob) {
    case Knob::BudgetRate: settings.budget_rate = value; break;
    case Knob::Threshold: settings.threshold = value; break;
    case Knob::Window: settings.window_blocks = std::max<int64_t>(1, std::llround(value)); break;
    case Knob::None: break;
  }
}

StemSettings eval_base_settings(int64_t min_prompt_len) {
  StemSettings st;
  st.min_prompt_len = min_prompt_len;
  return st;
}

Method make_method(const std::string& family, double target, double value, int64_t min_prompt_len,
                   bool small_always) {
  Method m;
  m.family = family;
  m.target = target;
  m.settings = eval_base_settings(min_prompt_len);
  if (family == "dense") {
    m.sparse = false;
  } else if (family == "stem") {
    m.knob = Knob::BudgetRate;
  } else if (family == "stem-no-bonus") {
    m.knob = Knob::BudgetRate;
    m.settings.lambda = 0;
  } else if (family == "stem-no-decay") {
    m.knob = Knob::BudgetRate;
    m.settings.position_decay = false;
  } else if (family == "uniform-topk") {
    m.knob = Knob::BudgetRate;
    m.settings.lambda = 0;
    m.settings.position_decay = false;
  } else if (family == "sink-window") {
    m.knob = Knob::Window;
    m.settings.selector = StemSelector::None;
  } else if (family == "xattention") {
    m.knob = Knob::Threshold;
    m.settings.selector = StemSelector::Threshold;
    m.settings.lambda = 0;
  } else if (family == "stem-mass") {
    // The XAttention-style threshold on Stem's score (the value bonus kept, λ 0.2): each head of a
    // row keeps the fewest blocks that reach the threshold's share of the softmax mass. Causal by
    // construction (a row's blocks depend on its own keys only), so a prefix's selection does not
    // change with what follows it (issue 17's causal schedule).
    m.knob = Knob::Threshold;
    m.settings.selector = StemSelector::Threshold;
  } else if (family == "stem-mass-fine" || family == "stem-mass-deep") {
    // Where stem-mass loses answers (multi-key, multi-value, variable tracking at 32K): a finer
    // estimate (stride 4: twice the antidiagonals per block pair) or two more dense layers.
    m.knob = Knob::Threshold;
    m.settings.selector = StemSelector::Threshold;
    if (family == "stem-mass-fine") m.settings.stride = 4;
    if (family == "stem-mass-deep") m.settings.dense_layers = 4;
  } else if (family == "stem-mass-tail" || family == "stem-mass-tail4") {
    // The threshold on Stem's score with the prompt's last query blocks dense (2 or 4 blocks:
    // 256 or 512 tokens): the question and the template's turn end, whose rows make the first
    // answer token, see every key block.
    m.knob = Knob::Threshold;
    m.settings.selector = StemSelector::Threshold;
    m.settings.dense_tail_blocks = family == "stem-mass-tail4" ? 4 : 2;
  } else if (family == "stem-causal") {
    // The causal schedule (StemSettings::causal): row i keeps the start budget of a prompt of i + 1
    // blocks, whatever follows, so a cached prefix's K/V is a fresh prefill's (issue 17).
    m.knob = Knob::BudgetRate;
    m.settings.causal = true;
  } else if (family == "stem-hpc") {
    // AngelSlim's hpc backend defaults (stem/backends/hpc_impl.py at 67394ce): stride 16,
    // lambda_mag 0.3, stem_alpha 1.0 (no decay: every row keeps k_s).
    m.knob = Knob::BudgetRate;
    m.settings.stride = 16;
    m.settings.lambda = 0.3;
    m.settings.alpha = 1.0;
  } else if (family == "stem-adaptive") {
    // A per-head adaptive budget inside the position-decay envelope (StemSelector::Adaptive): the
    // threshold (the knob) picks each head's blocks by score mass, at most k(i) of the schedule at
    // budget rate 1.5 (about 47-50% of the causal blocks at 32K, so every target is inside it).
    m.knob = Knob::Threshold;
    m.settings.selector = StemSelector::Adaptive;
    m.settings.budget_rate = 1.5;
  } else {
    throw Error("unknown method family '" + family +
                "' (dense, stem, stem-no-bonus, stem-no-decay, uniform-topk, sink-window, xattention, stem-mass, "
                "stem-mass-fine, stem-mass-deep, stem-mass-tail, stem-mass-tail4, stem-causal, stem-hpc, stem-adaptive)");
  }
  if (small_always && m.sparse && target > 0 && target < kLowDensity) {
    m.settings.sink_blocks = 2;
    m.settings.window_blocks = 2;
  }
  if (m.knob != Knob::None && value > 0) m.set_knob(value);
  m.name = family;
  if (target > 0) m.name += "@" + std::to_string(std::lround(target * 100)) + "%";
  return m;
}

std::vector<Method> full_methods(const std::vector<double>& targets, int64_t min_prompt_len) {
  std::vector<Method> methods = {make_method("dense", 0, 0, min_prompt_len), make_method("stem", 0, 0, min_prompt_len)};
  for (const char* family : {"stem", "stem-no-bonus", "stem-no-decay", "uniform-topk", "sink-window", "xattention"})
    for (double t : targets) {
      // Starting guesses at 8K (nb 64): k_s = 42 at rate 1 keeps ~85%; sink + window of m blocks
      // keeps about m·64 − m(m − 1)/2 of 2080; a threshold tau keeps about tau at most.
      const double window = 64 - std::sqrt(64.0 * 64 - 2 * 2080 * t) - (t < kLowDensity ? 2 : 4);
      const double guess = std::string(family) == "sink-window" ? std::max(1.0, window) : t;
      methods.push_back(make_method(family, t, guess, min_prompt_len));
    }
  return methods;
}

std::vector<Method> long_methods(const std::vector<double>& targets, int64_t min_prompt_len) {
  std::vector<Method> methods = {make_method("dense", 0, 0, min_prompt_len, false),
                                 make_method("stem", 0, 0, min_prompt_len, false),
                                 make_method("stem-hpc", 0, 0, min_prompt_len, false),
                                 make_method("stem-causal", 0, 0, min_prompt_len, false)};
  for (double t : targets)
    for (const char* family :
         {"stem", "stem-no-bonus", "stem-no-decay", "uniform-topk", "xattention", "stem-mass", "stem-mass-fine",
          "stem-mass-deep", "stem-mass-tail", "stem-mass-tail4", "stem-causal", "sink-window", "stem-hpc", "stem-adaptive"})
      methods.push_back(make_method(family, t, 0, min_prompt_len, false));
  return methods;
}

std::vector<Method> quick_methods(int64_t min_prompt_len) {
  // At 1K tokens (nb 8) the 4 sink and 4 window blocks alone cover every block: one sink block,
  // a window of two and a budget rate of 0.25 (k_s = 2 blocks by score) make the rows from
  // block 5 on drop blocks.
  Method stem = make_method("stem", 0, 0.25, min_prompt_len);
  stem.settings.sink_blocks = 1;
  stem.settings.window_blocks = 2;
  stem.name = "stem-quick";
  return {make_method("dense", 0, 0, min_prompt_len), stem};
}

nlohmann::json to_json(const Method& m) {
  const StemSettings& s = m.settings;
  nlohmann::json j = {{"name", m.name}, {"family", m.family}, {"sparse", m.sparse}};
  if (m.target > 0) j["target_density"] = m.target;
  if (m.sparse)
    j["settings"] = {{"selector", stem_selector_name(s.selector)}, {"stride", s.stride}, {"budget_rate", s.budget_rate},
                     {"alpha", s.alpha}, {"lambda", s.lambda}, {"position_decay", s.position_decay},
                     {"causal", s.causal},
                     {"threshold", s.threshold}, {"sink_blocks", s.sink_blocks}, {"window_blocks", s.window_blocks},
                     {"dense_layers", s.dense_layers}, {"min_prompt_len", s.min_prompt_len},
                     {"dense_tail_blocks", s.dense_tail_blocks}};
  if (!m.calibration.is_null()) j["calibration"] = m.calibration;
  return j;
}

Method method_from_json(const nlohmann::json& j) {
  Method m = make_method(j.at("family").get<std::string>(), j.value("target_density", 0.0), 0,
                         j.contains("settings") ? j["settings"].value("min_prompt_len", int64_t{0}) : 0);
  m.name = j.at("name").get<std::string>();
  if (j.contains("calibration")) m.calibration = j["calibration"];
  if (!j.contains("settings")) return m;
  const nlohmann::json& s = j["settings"];
  StemSettings& st = m.settings;
  st.selector = parse_stem_selector(s.at("selector").get<std::string>());
  st.stride = s.value("stride", st.stride);
  st.budget_rate = s.at("budget_rate");
  st.alpha = s.at("alpha");
  st.lambda = s.at("lambda");
  st.position_decay = s.at("position_decay");
  st.causal = s.value("causal", false);  // records made before the causal schedule have none
  st.threshold = s.at("threshold");
  st.sink_blocks = s.at("sink_blocks");
  st.window_blocks = s.at("window_blocks");
  st.dense_layers = s.at("dense_layers");
  st.min_prompt_len = s.at("min_prompt_len");
  st.dense_tail_blocks = s.value("dense_tail_blocks", int64_t{0});  // records made before the tail have none
  check_stem_settings(st);
  return m;
}

}  // namespace stem::eval
