// Structured output's costs on the CPU: building the vocabulary's trie, compiling a schema or a
// regex, and the per-step token masks for a batch of sequences that all follow it.
//
//   build-test/bench_structured [MODEL_DIR] [BATCH] [STEPS]
//   build-test/bench_structured MODEL_DIR maxlength [N...]
// MODEL_DIR: a folder with the tokenizer (default models/cache/SmolLM2-135M-Instruct). The second
// form measures issue 19's long strings alone: one sequence through a string of maxLength N
// (default 200 and 1000), masks unshared (one trie walk per state: before) and shared.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_schema.h"
#include "structured/json_schema.h"
#include "structured/regex.h"
#include "structured/token_mask.h"
#include "text/tokenizer.h"

using namespace stem;
using namespace stem::structured;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// A typical structured_outputs regex: names, an e-mail address, a phone number.
const char* kRegex = R"(([A-Z][a-z]{1,12} ){1,3}<[a-z0-9._%+-]{1,20}@[a-z0-9-]{1,20}\.(com|org|net)>, \(\d{3}\) \d{3}-\d{4})";
// A schema whose strings have a pattern and length bounds.
const char* kStringSchema = R"({"type": "object", "additionalProperties": false, "required": ["id", "code", "note"],
  "properties": {"id": {"type": "string", "pattern": "^[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$"},
    "code": {"type": "string", "pattern": "^[A-Z]{2,3}-\\d{3,5}$"}, "note": {"type": "string", "maxLength": 200}}})";

void run(const char* label, const std::function<Grammar()>& compile, std::shared_ptr<const TokenVocab> vocab,
         int batch, int steps) {
  std::vector<double> compile_ms;
  for (int i = 0; i < 50; ++i) {
    const auto t0 = Clock::now();
    Grammar g = compile();
    compile_ms.push_back(ms_since(t0));
  }
  auto tg = std::make_shared<TokenGrammar>(compile(), vocab);
  // Cold masks: the trie walk for the states along one document, no cache.
  {
    TokenMatcher walker(tg);
    std::mt19937_64 rng(1);
    std::vector<double> cold;
    for (int s = 0; s < 40 && !walker.finished(); ++s) {
      const auto t0 = Clock::now();
      const std::vector<uint32_t> m = tg->compute_mask(walker.matcher());
      cold.push_back(ms_since(t0));
      std::vector<int32_t> ids;
      for (int64_t id = 0; id < vocab->mask_size(); ++id)
        if (mask_allows(m.data(), static_cast<int32_t>(id))) ids.push_back(static_cast<int32_t>(id));
      walker.accept(ids[std::uniform_int_distribution<size_t>(0, ids.size() - 1)(rng)]);
    }
    std::printf("%s: compile median %.3f ms (%zu states); cold mask (trie walk) median %.2f ms, max %.2f ms\n",
                label, median(compile_ms), tg->grammar().num_states(), median(cold),
                *std::max_element(cold.begin(), cold.end()));
  }
  // A batch stepping together through the schema; tokens drawn at random under the mask (a
  // sequence that finishes starts over), the cache shared as the engine shares it per request.
  std::vector<TokenMatcher> seqs(static_cast<size_t>(batch), TokenMatcher(tg));
  std::vector<std::mt19937_64> rngs;
  for (int b = 0; b < batch; ++b) rngs.emplace_back(static_cast<uint64_t>(b) + 100);
  std::vector<const uint32_t*> masks(static_cast<size_t>(batch));
  std::vector<double> step_ms, accept_ms;
  std::vector<float> logits(static_cast<size_t>(vocab->mask_size()) * static_cast<size_t>(batch), 0.5f);
  std::vector<double> apply_ms;
  for (int step = 0; step < steps; ++step) {
    auto t0 = Clock::now();
    for (int b = 0; b < batch; ++b) masks[static_cast<size_t>(b)] = seqs[static_cast<size_t>(b)].mask();
    step_ms.push_back(ms_since(t0));
    t0 = Clock::now();
    for (int b = 0; b < batch; ++b)
      apply_mask(logits.data() + static_cast<size_t>(b) * static_cast<size_t>(vocab->mask_size()), vocab->mask_size(),
                 masks[static_cast<size_t>(b)]);
    apply_ms.push_back(ms_since(t0));
    std::vector<int32_t> chosen(static_cast<size_t>(batch));
    for (int b = 0; b < batch; ++b) {
      std::vector<int32_t> ids;
      const uint32_t* mask = masks[static_cast<size_t>(b)];
      for (size_t w = 0; w < vocab->mask_words(); ++w)
        for (uint32_t bits = mask[w]; bits; bits &= bits - 1) ids.push_back(static_cast<int32_t>(w * 32 + __builtin_ctz(bits)));
      chosen[static_cast<size_t>(b)] = ids[std::uniform_int_distribution<size_t>(0, ids.size() - 1)(rngs[static_cast<size_t>(b)])];
    }
    t0 = Clock::now();
    for (int b = 0; b < batch; ++b) seqs[static_cast<size_t>(b)].accept(chosen[static_cast<size_t>(b)]);
    accept_ms.push_back(ms_since(t0));
    for (TokenMatcher& m : seqs)
      if (m.finished()) m = TokenMatcher(tg);
  }
  double total = 0;
  for (double t : step_ms) total += t;
  std::printf("%s: batch %d, %d steps: masks per step mean %.3f ms, median %.3f ms, max %.2f ms; "
              "applying them to the logits %.3f ms; accept %.3f ms; %zu cached states\n",
              label, batch, steps, total / steps, median(step_ms), *std::max_element(step_ms.begin(), step_ms.end()),
              median(apply_ms), median(accept_ms), tg->cached_states());
}

// kSequences sequences (one after another, sharing the mask cache as a request's do) each write
// a {"note": string of maxLength n} object, drawing among the allowed tokens (those without '"'
// while the string may go on, so that it runs to its bound); the same draws with masks shared
// and unshared (the masks are equal, so the texts are too).
constexpr int kSequences = 16;
void run_maxlength(std::shared_ptr<const TokenVocab> vocab, int64_t n) {
  const nlohmann::json schema = {{"type", "object"},
                                 {"additionalProperties", false},
                                 {"required", {"note"}},
                                 {"properties", {{"note", {{"type", "string"}, {"maxLength", n}}}}}};
  for (bool share : {false, true}) {
    Grammar g = compile_json_schema(schema);
    const size_t states = g.num_states();
    auto t0 = Clock::now();
    auto tg = std::make_shared<TokenGrammar>(std::move(g), vocab, share);
    const double setup_ms = ms_since(t0);
    std::vector<double> mask_ms;
    std::vector<int32_t> ids, inside;
    size_t tokens = 0, bytes = 0;
    for (int seq = 0; seq < kSequences; ++seq) {
      TokenMatcher tm(tg);
      std::mt19937_64 rng(static_cast<uint64_t>(seq) + 7);
      std::string text;
      while (!tm.finished()) {
        t0 = Clock::now();
        const uint32_t* mask = tm.mask();
        mask_ms.push_back(ms_since(t0));
        ids.clear();
        inside.clear();
        for (size_t w = 0; w < vocab->mask_words(); ++w)
          for (uint32_t bits = mask[w]; bits; bits &= bits - 1) {
            const auto id = static_cast<int32_t>(w * 32 + __builtin_ctz(bits));
            ids.push_back(id);
            if (!vocab->bytes(id).empty() && vocab->bytes(id).find('"') == std::string::npos) inside.push_back(id);
          }
        const std::vector<int32_t>& from = text.size() > 9 && !inside.empty() ? inside : ids;  // past {"note":"
        const int32_t id = from[std::uniform_int_distribution<size_t>(0, from.size() - 1)(rng)];
        if (!tm.accept(id)) {
          std::fprintf(stderr, "a token the mask allowed was refused\n");
          std::exit(1);
        }
        ++tokens;
        if (!tm.finished()) text += vocab->bytes(id);
      }
      bytes += text.size();
    }
    double total = 0;
    for (double t : mask_ms) total += t;
    const MaskStats st = tg->stats();
    std::printf("maxLength %lld, masks %s: %zu states, TokenGrammar set up in %.1f ms; %d sequences, %zu tokens (%zu bytes); "
                "%zu full walks, %zu partial walks, %zu trie nodes reached, %zu masks cached; masks %.1f ms in all "
                "(max %.2f ms)\n",
                static_cast<long long>(n), share ? "shared" : "unshared", states, setup_ms, kSequences, tokens, bytes,
                st.full_walks, st.partial_walks, st.walked_nodes, tg->cached_states(), total,
                *std::max_element(mask_ms.begin(), mask_ms.end()));
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string dir = argc > 1 ? argv[1] : "models/cache/SmolLM2-135M-Instruct";
  const bool maxlength = argc > 2 && std::string(argv[2]) == "maxlength";
  const int batch = argc > 2 && !maxlength ? std::stoi(argv[2]) : 64;
  const int steps = argc > 3 && !maxlength ? std::stoi(argv[3]) : 200;
  auto tok = load_tokenizer(dir);
  auto t0 = Clock::now();
  auto vocab = TokenVocab::from_tokenizer(*tok, tok->vocab_size());
  std::printf("vocabulary: %lld tokens (longest %zu bytes), trie of %zu nodes built in %.1f ms\n",
              static_cast<long long>(vocab->mask_size()), vocab->max_token_bytes(), vocab->nodes().size(), ms_since(t0));
  if (maxlength) {
    std::vector<int64_t> ns;
    for (int i = 3; i < argc; ++i) ns.push_back(std::stoll(argv[i]));
    if (ns.empty()) ns = {200, 1000};
    for (int64_t n : ns) run_maxlength(vocab, n);
    return 0;
  }
  const nlohmann::json schema = nlohmann::json::parse(bench::kTypicalSchema);
  run("schema", [&] { return compile_json_schema(schema); }, vocab, batch, steps);
  run("json_object", [] { return any_json_object(); }, vocab, batch, steps);
  run("regex", [] { return compile_regex(kRegex); }, vocab, batch, steps);
  const nlohmann::json strings = nlohmann::json::parse(kStringSchema);
  run("schema with pattern / maxLength", [&] { return compile_json_schema(strings); }, vocab, batch, steps);
}
