#include "bench/eval/eval_tasks.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include "kernels/check.h"

namespace stem::eval {

namespace {

// The usual passkey prompt (Mohtashami & Jaggi, 2023): a task statement, filler sentences, the
// key among them, the question. The answer is primed with "The pass key is" after the template's
// generation prompt, so that a small model answers with the number at once.
const char* kTask =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n\n";
const char* kFiller = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
const char* kQuestion = "\n\nWhat is the pass key?";
const char* kAnswerPrefix = " The pass key is";

std::string passkey_text(int64_t fillers, int64_t needle_at, const std::string& key) {
  std::string text = kTask;
  for (int64_t i = 0; i <= fillers; ++i) {
    if (i == needle_at) text += "The pass key is " + key + ". Remember it. " + key + " is the pass key. ";
    if (i < fillers) text += kFiller;
  }
  return text + kQuestion;
}

std::vector<int32_t> passkey_ids(const EvalModel& model, int64_t fillers, int64_t needle_at, const std::string& key) {
  return model.tokenizer().encode(model.chat(passkey_text(fillers, needle_at, key)) + kAnswerPrefix, false);
}

std::string first_number(const std::string& text) {
  size_t a = text.find_first_of("0123456789");
  if (a == std::string::npos) return "";
  size_t b = text.find_first_not_of("0123456789", a);
  return text.substr(a, b == std::string::npos ? std::string::npos : b - a);
}

}  // namespace

std::vector<PasskeyCase> make_passkey_cases(const EvalModel& model, const std::vector<int64_t>& lengths, int depths,
                                            int answer_tokens) {
  std::mt19937 rng(20260207);
  std::uniform_int_distribution<int> digits(10000, 99999);
  std::vector<PasskeyCase> cases;
  for (int64_t length : lengths) {
    const int64_t budget = std::min(length, model.max_tokens() - answer_tokens);
    // Tokens grow by a near-constant amount per filler sentence: extrapolate, then step down.
    const int64_t base = static_cast<int64_t>(passkey_ids(model, 0, 0, "12345").size());
    const int64_t per = static_cast<int64_t>(passkey_ids(model, 100, 0, "12345").size()) - base;
    STEM_CHECK(per > 0 && base < budget, "passkey: a prompt of length ", length, " has no room for filler");
    for (int d = 0; d < depths; ++d) {
      PasskeyCase c;
      c.length = length;
      c.depth = (d + 0.5) / depths;
      c.key = std::to_string(digits(rng));
      int64_t fillers = (budget - base) * 100 / per + 1;
      for (;; --fillers) {
        c.ids = passkey_ids(model, fillers, std::llround(c.depth * static_cast<double>(fillers)), c.key);
        if (static_cast<int64_t>(c.ids.size()) <= budget) break;
      }
      cases.push_back(std::move(c));
    }
  }
  return cases;
}

nlohmann::json run_passkey(EvalModel& model, const Method& m, const std::vector<PasskeyCase>& cases,
                           int answer_tokens) {
  model.use(m);
  nlohmann::json out = nlohmann::json::array();
  int correct = 0;
  for (const PasskeyCase& c : cases) {
    double density = 0;
    const std::vector<int32_t> answer = model.greedy(c.ids, answer_tokens, &density);
    const std::string text = model.tokenizer().decode(answer, true);
    const bool ok = first_number(text) == c.key;
    correct += ok ? 1 : 0;
    nlohmann::json r = {{"method", m.name}, {"length", c.length}, {"tokens", c.ids.size()}, {"depth", c.depth},
                        {"key", c.key},     {"answer", text},     {"correct", ok}};
    if (!std::isnan(density)) r["density"] = density;
    out.push_back(r);
  }
  spdlog::info("passkey {:<22} {}/{} correct", m.name, correct, cases.size());
  return out;
}

std::vector<Document> load_documents(const EvalModel& model, const std::vector<std::filesystem::path>& files,
                                     int64_t max_tokens, int64_t min_tokens) {
  std::vector<Document> docs;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    STEM_CHECK(in.good(), f.string(), ": cannot read this document");
    std::stringstream text;
    text << in.rdbuf();
    Document d;
    d.name = f.filename().string();
    d.ids = model.tokenizer().encode(text.str(), true);
    STEM_CHECK(static_cast<int64_t>(d.ids.size()) >= min_tokens, f.string(), " has ", d.ids.size(),
               " tokens; the perplexity measure wants documents of at least ", min_tokens);
    if (static_cast<int64_t>(d.ids.size()) > max_tokens) d.ids.resize(static_cast<size_t>(max_tokens));
    docs.push_back(std::move(d));
  }
  return docs;
}

nlohmann::json run_perplexity(EvalModel& model, const Method& m, const std::vector<Document>& docs,
                              int64_t tail_from) {
  model.use(m);
  nlohmann::json out = nlohmann::json::array();
  for (const Document& d : docs) {
    std::vector<int32_t> rows(d.ids.size());
    std::iota(rows.begin(), rows.end(), 0);
    const PrefillResult r = model.prefill(d.ids, rows);
    const std::vector<double> nll = next_token_nll(r.logits, d.ids);
    // nll[t] predicts position t + 1.
    double all = 0, tail = 0;
    int64_t tail_n = 0;
    for (size_t t = 0; t < nll.size(); ++t) {
      all += nll[t];
      if (static_cast<int64_t>(t) + 1 >= tail_from) tail += nll[t], ++tail_n;
    }
    all /= static_cast<double>(nll.size());
    nlohmann::json rec = {{"method", m.name}, {"doc", d.name},       {"tokens", d.ids.size()},
                          {"nll", all},       {"ppl", std::exp(all)}, {"seconds", r.seconds}};
    if (tail_n > 0) rec["ppl_tail"] = std::exp(tail / static_cast<double>(tail_n)), rec["tail_from"] = tail_from;
    if (!std::isnan(r.density)) rec["density"] = r.density;
    spdlog::info("ppl     {:<22} {:<14} {:>5} tokens: {:.4f}{}", m.name, d.name, d.ids.size(), std::exp(all),
                 std::isnan(r.density) ? std::string() : fmt::format(" (density {:.3f})", r.density));
    out.push_back(rec);
  }
  return out;
}

}  // namespace stem::eval
