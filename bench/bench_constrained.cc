// Structured outputs' cost in a served batch (issue 19's speed item: at batch 64 on the H100 a decode
// step with every sequence constrained by a JSON schema costs at most 10% more than an unconstrained
// one, constrained requests do not slow the unconstrained ones of their batch, and a typical schema
// compiles in under 50 ms). The whole engine (scheduler, the samplers with their grammar matchers
// and token masks, the backend's masked sampling: kernels/cuda/token_mask.cu on the GPU) over
// random (dummy) weights of a real model's config.json, with that model's own tokenizer: the masks
// are as wide as its vocabulary (Qwen2.5-Coder-1.5B-Instruct: 151936 ids, 4748 words a row).
//
// For each batch size B, three configurations run in turn (--rounds times, the steps pooled):
//   unconstrained  B requests, no grammar;
//   constrained    B requests constrained by bench/bench_schema.h's schema, sharing one grammar
//                  compiled for the run, as the server's GrammarCache shares it between requests
//                  with the same schema (so each mask is computed once a run, for all B);
//                  --grammar-per-request: each request compiles its own (each mask computed once a
//                  request: the server before its grammar cache);
//   mixed          the even requests constrained, the odd ones not (B >= 2).
// Each request has a prompt of --prompt random tokens and generates exactly --tokens tokens (EOS
// ignored: after a complete JSON value a constrained sequence may only repeat EOS), sampled at
// --temperature so that the grammar walks. All B are prefilled together, then decode together.
// Before the runs, one short mixed run at every batch size warms the path up (CUDA graphs are
// captured per padded batch size). Reported after each run's first --warmup decode steps (the mean
// still holds the steps where constrained requests walk the trie for states new to them, and the
// batch waits for those masks): the median (and mean, p90, max) wall time of
// Engine::step() for B sequences, the backend's device time of the step (CUDA: from the metadata
// upload to the sampled tokens on the host, masks included), the engine's host time around the
// backend (step wall − forward_sample: scheduling, masks looked up or computed, matchers advanced,
// streaming), the median inter-token time of the unconstrained and of the constrained requests
// (from their streamed events; for a mixed batch also the unconstrained requests' mean), the time
// to every request's first token (prefill plus each request's first mask), and the trie walks done
// (masks computed, not found cached). Ratios are to the unconstrained run of the same B. Before
// that: the schema's compile time (median of --compiles) and a mask computed cold at the start of
// the value and inside a string (medians of 10).
//
// Checks (the run fails when one does not hold): every token of a constrained sequence is one its
// grammar allows (the mask reached the sampled row through the backend), every unconstrained
// sequence of a mixed batch has a token the grammar refuses (no mask leaked onto it), and a
// constrained sequence whose value completed (it reached EOS) parses as JSON that the schema
// accepts (tests/structured/schema_check.h).
//
//   bench_constrained [--model DIR] [--device cuda|cpu] [--batches 1,16,64] [--tokens 128]
//                     [--prompt 32] [--warmup 2] [--rounds 2] [--temperature 1] [--compiles 200]
//                     [--gpu-memory-fraction 0.9] [--load-format dummy|real] [--json FILE]
//                     [--grammar-per-request]
// With random weights (--load-format dummy, the default on cuda) DIR needs only config.json,
// tokenizer.json and tokenizer_config.json. The CPU backend has no random weights: on cpu the
// default is --load-format real, the model's own weights (DIR as models/prepare/ leaves it).
//
// Here (no GPU; the binary is built here, the GPU machine cannot build the server), with
// Qwen2.5-Coder-1.5B-Instruct's config.json, tokenizer.json and tokenizer_config.json in
// models/cache/Qwen2.5-Coder-1.5B-Instruct/ (or STEM_CONSTRAINED_MODEL=DIR):
//   scripts/gpu_model_test.sh pack constrained   # CUDA build in build-gpumodel/ (STEM_BUILD_DIR),
//                                                # into build-gpumodel-constrained/ (~15 MiB): the
//                                                # binary, its libraries, qwen-coder-1.5b/
// There (the device tool, carry ["build-gpumodel-constrained"], from the repository root):
//   bash scripts/gpu_model_test.sh constrained    # log and JSON to $OUT (constrained.txt, .json);
//                                                 # more flags after it go to the bench, e.g. --rounds 3
// which runs
//   LD_LIBRARY_PATH=build-gpumodel-constrained/lib build-gpumodel-constrained/bin/bench_constrained
//       --model build-gpumodel-constrained/qwen-coder-1.5b --device cuda --batches 1,16,64 --tokens 256
//       --json $OUT/constrained.json
// (The full `scripts/gpu_model_test.sh pack` carries the binary too, without the tokenizer.)
// A CPU smoke run here (build/ configured with -DSTEM_CUDA=OFF; SmolLM2-135M-Instruct and its weights):
//   cmake --build build -j2 --target bench_constrained
//   build/bench_constrained --model models/cache/SmolLM2-135M-Instruct --device cpu --batches 1,4 --tokens 24 --warmup 4
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "bench/bench_schema.h"
#include "bench/bench_util.h"
#include "engine/engine.h"
#include "kernels/check.h"
#include "structured/json_schema.h"
#include "structured/token_mask.h"
#include "tests/structured/schema_check.h"
#include "text/tokenizer.h"

using namespace stem;
using bench::median;
using bench::now_ms;
using bench::parse_list;

namespace {

struct Args {
  std::string model = "models/cache/Qwen2.5-Coder-1.5B-Instruct";
  std::string device = "cuda";
  std::vector<int64_t> batches = {1, 16, 64};
  int64_t tokens = 128;
  int64_t prompt = 32;
  int warmup = 2;
  int rounds = 2;
  float temperature = 1.0f;
  int compiles = 200;
  double fraction = 0.9;
  std::string load_format;  // "dummy" or "real"; "": dummy on cuda, real on cpu
  std::string json;
  bool grammar_per_request = false;
};

Args parse(int argc, char** argv) {
  Args a;
  bench::parse_flags(argc, argv, {"--grammar-per-request"}, [&a](const std::string& k, const std::string& v) {
    if (k == "--model") a.model = v;
    else if (k == "--grammar-per-request") a.grammar_per_request = true;
    else if (k == "--device") a.device = v;
    else if (k == "--batches") a.batches = parse_list(v);
    else if (k == "--tokens") a.tokens = std::stoll(v);
    else if (k == "--prompt") a.prompt = std::stoll(v);
    else if (k == "--warmup") a.warmup = std::stoi(v);
    else if (k == "--rounds") a.rounds = std::stoi(v);
    else if (k == "--temperature") a.temperature = std::stof(v);
    else if (k == "--compiles") a.compiles = std::stoi(v);
    else if (k == "--gpu-memory-fraction") a.fraction = std::stod(v);
    else if (k == "--load-format") a.load_format = v;
    else if (k == "--json") a.json = v;
    else throw Error("unknown argument " + k);
  });
  STEM_CHECK(a.device == "cpu" || a.device == "cuda", "--device takes cpu or cuda, got ", a.device);
  if (a.load_format.empty()) a.load_format = a.device == "cuda" ? "dummy" : "real";
  STEM_CHECK(a.load_format == "dummy" || a.load_format == "real", "--load-format takes dummy or real, got ",
             a.load_format);
  STEM_CHECK(!(a.device == "cpu" && a.load_format == "dummy"),
             "--device cpu needs --load-format real (the CPU backend has no random weights): a model folder with its weights");
  STEM_CHECK(!a.batches.empty(), "--batches is empty");
  for (int64_t b : a.batches) STEM_CHECK(b >= 1, "--batches: each batch size must be at least 1");
  STEM_CHECK(a.prompt >= 1, "--prompt must be at least 1");
  STEM_CHECK(a.warmup >= 0, "--warmup must be >= 0");
  STEM_CHECK(a.tokens > a.warmup + 1, "--tokens must exceed --warmup + 1 (decode steps are timed after the warm-up)");
  STEM_CHECK(a.rounds >= 1, "--rounds must be at least 1");
  STEM_CHECK(a.temperature > 0, "--temperature must be positive (sampling walks the grammar)");
  STEM_CHECK(a.compiles >= 1, "--compiles must be at least 1");
  return a;
}

enum class Mode { Unconstrained, Constrained, Mixed };
const char* mode_name(Mode m) {
  return m == Mode::Unconstrained ? "unconstrained" : m == Mode::Constrained ? "constrained" : "mixed";
}
bool is_constrained(Mode m, int64_t i) { return m == Mode::Constrained || (m == Mode::Mixed && i % 2 == 0); }

// The backend's device time of the last step; NaN on a backend that does not time it (the CPU's).
double last_device_ms(const Engine& engine) {
  const double ms = engine.backend().last_step_device_ms();
  return ms < 0 ? std::nan("") : ms;
}

// Samples pooled over the rounds of one (batch, mode).
struct Samples {
  std::vector<double> wall, device, host;  // per timed decode step, ms
  std::vector<double> itl_unc, itl_con;    // inter-token gaps after the warm-up, ms
  std::vector<double> first_token;         // per run: adding the requests to every first token, ms
  std::vector<double> walks;               // per run: masks computed (trie walks), all requests
  int64_t constrained_seqs = 0, complete = 0;
};

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}
double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? std::nan("") : s / static_cast<double>(v.size());
}
double med(const std::vector<double>& v) { return v.empty() ? std::nan("") : median(v); }

struct Context {
  Engine& engine;
  std::shared_ptr<const structured::TokenVocab> vocab;
  nlohmann::ordered_json schema;
  nlohmann::json schema_plain;  // the same, for the independent check
  std::shared_ptr<structured::TokenGrammar> check_grammar;  // the checks' own (a cache apart)
};

// Whether a fresh matcher of the schema accepts every token; `complete` when it reached EOS.
bool follows_grammar(const Context& cx, const std::vector<int32_t>& tokens, bool& complete, std::string& text) {
  structured::TokenMatcher m(cx.check_grammar);
  for (int32_t t : tokens) {
    const bool was_finished = m.finished();
    if (!m.accept(t)) return false;
    if (!was_finished && !m.finished()) text += cx.vocab->bytes(t);
  }
  complete = m.finished();
  return true;
}

// One run: B requests of `mode` through the engine until every one has its tokens.
void run(Context& cx, const Args& a, int64_t B, Mode mode, uint64_t seed, Samples& s) {
  Engine& engine = cx.engine;
  std::mt19937_64 rng(seed);
  const auto prompt_vocab = static_cast<uint64_t>(std::min<int64_t>(engine.tokenizer().vocab_size(), engine.config().vocab_size));
  std::vector<std::vector<int32_t>> tokens(static_cast<size_t>(B));
  std::vector<std::vector<double>> times(static_cast<size_t>(B));
  std::vector<std::string> errors(static_cast<size_t>(B));  // a request the engine aborted
  std::vector<std::shared_ptr<structured::TokenGrammar>> grammars(static_cast<size_t>(B));
  const double t_add = now_ms();
  for (int64_t i = 0; i < B; ++i) {
    GenerateRequest r;
    for (int64_t p = 0; p < a.prompt; ++p) r.prompt.push_back(static_cast<int32_t>(rng() % prompt_vocab));
    r.sampling.temperature = a.temperature;
    r.sampling.seed = seed * 1000003 + static_cast<uint64_t>(i);
    r.stop.max_tokens = static_cast<int32_t>(a.tokens);
    r.stop.ignore_eos = true;
    if (is_constrained(mode, i)) {
      auto& g = grammars[static_cast<size_t>(i)];
      if (!a.grammar_per_request && i > 0) g = grammars[0];  // request 0 is constrained in every mode
      if (!g) g = std::make_shared<structured::TokenGrammar>(structured::compile_json_schema(cx.schema), cx.vocab);
      r.sampling.grammar = g;
    }
    const auto k = static_cast<size_t>(i);
    engine.add_request(std::move(r), [&tokens, &times, &errors, k](const TokenEvent& e) {
      if (!e.error.empty()) errors[k] = e.error;
      if (e.token < 0) return;
      times[k].push_back(now_ms());
      tokens[k].push_back(e.token);
    });
  }
  int64_t decode_steps = 0;
  bool first_done = false;
  while (engine.has_work()) {
    const double t0 = now_ms();
    const StepStats st = engine.step();
    const double wall = now_ms() - t0;
    if (!first_done && std::all_of(tokens.begin(), tokens.end(), [](const auto& t) { return !t.empty(); })) {
      s.first_token.push_back(now_ms() - t_add);
      first_done = true;
    }
    const bool pure_decode = st.num_seqs == B && st.num_decode == B && st.num_tokens == B;
    if (!pure_decode) continue;
    if (++decode_steps <= a.warmup) continue;
    s.wall.push_back(wall);
    s.device.push_back(last_device_ms(engine));
    s.host.push_back(wall - st.forward_seconds * 1e3);
  }
  double walks = 0;
  for (int64_t i = 0; i < B; ++i) {
    const auto k = static_cast<size_t>(i);
    STEM_CHECK(errors[k].empty(), mode_name(mode), " batch ", B, ": request ", i, " failed: ", errors[k]);
    STEM_CHECK(static_cast<int64_t>(tokens[k].size()) == a.tokens, mode_name(mode), " batch ", B, ": request ", i,
               " generated ", tokens[k].size(), " tokens, not ", a.tokens);
    std::vector<double>& itl = is_constrained(mode, i) ? s.itl_con : s.itl_unc;
    for (size_t t = static_cast<size_t>(a.warmup) + 1; t < times[k].size(); ++t) itl.push_back(times[k][t] - times[k][t - 1]);
    bool complete = false;
    std::string text;
    const bool follows = follows_grammar(cx, tokens[k], complete, text);
    if (is_constrained(mode, i)) {
      // A shared grammar's walks count once.
      if (a.grammar_per_request || k == 0) walks += static_cast<double>(grammars[k]->cached_states());
      ++s.constrained_seqs;
      STEM_CHECK(follows, mode_name(mode), " batch ", B, ": constrained request ", i,
                 " sampled a token its grammar does not allow (the mask did not reach its row)");
      if (complete) {
        ++s.complete;
        nlohmann::json v;
        try {
          v = nlohmann::json::parse(text);
        } catch (const std::exception& e) {
          throw Error(std::string(mode_name(mode)) + " batch " + std::to_string(B) + ": request " + std::to_string(i) +
                      " completed a value that is not JSON: " + e.what() + ": " + text.substr(0, 200));
        }
        STEM_CHECK(test::schema_accepts(v, cx.schema_plain), mode_name(mode), " batch ", B, ": request ", i,
                   " completed JSON the schema refuses: ", text.substr(0, 200));
      }
    } else if (mode == Mode::Mixed) {
      STEM_CHECK(!follows, "mixed batch ", B, ": unconstrained request ", i,
                 " followed the grammar for all its tokens (was its row masked?)");
    }
  }
  s.walks.push_back(walks);
}

struct Row {
  int64_t batch;
  Mode mode;
  Samples s;
};

// A figure for the table; "-" where there is none (no device time on the CPU, no requests of a kind).
std::string fmt(double x, const char* unit = "", int precision = 3) {
  if (std::isnan(x)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f%s", precision, x, unit);
  return buf;
}

nlohmann::json num(double x) { return std::isnan(x) ? nlohmann::json(nullptr) : nlohmann::json(x); }

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  const int64_t max_batch = *std::max_element(a.batches.begin(), a.batches.end());
  EngineOptions o;
  o.device = a.device;
  o.dummy_weights = a.load_format == "dummy";
  o.load_tokenizer = true;
  o.gpu_memory_fraction = a.fraction;
  o.sparse_prefill = SparsePrefill::Dense;
  o.enable_prefix_caching = false;
  o.max_num_seqs = max_batch;
  o.max_model_len = a.prompt + a.tokens + 16;
  o.kv_cache_tokens = max_batch * (o.max_model_len + o.page_size);
  o.max_num_batched_tokens = std::max(default_max_num_batched_tokens(a.device), max_batch * a.prompt);
  const double t_load = now_ms();
  Engine engine(a.model, o);
  const double load_s = (now_ms() - t_load) / 1e3;

  double t0 = now_ms();
  auto vocab = structured::TokenVocab::from_tokenizer(engine.tokenizer(), engine.config().vocab_size);
  const double vocab_ms = now_ms() - t0;
  const nlohmann::ordered_json schema = nlohmann::ordered_json::parse(bench::kTypicalSchema);
  Context cx{engine, vocab, schema, nlohmann::json::parse(bench::kTypicalSchema),
             std::make_shared<structured::TokenGrammar>(structured::compile_json_schema(schema), vocab)};

  std::printf("model: %s config and tokenizer of %s, %s weights, on %s (ready in %.1f s)\n",
              engine.config().architecture.c_str(), a.model.c_str(), o.dummy_weights ? "random" : "its own",
              engine.backend().name().c_str(), load_s);
  std::printf("vocabulary: %lld ids, masks of %zu words; its trie built in %.1f ms\n",
              static_cast<long long>(vocab->mask_size()), vocab->mask_words(), vocab_ms);

  // Compile time: the schema to a grammar (what a request pays before it is queued); and a mask
  // computed cold (a trie walk: what a request pays the first time it meets a state) at the start
  // (few tokens can open the value: the walk is cut early) and inside a string value (most tokens
  // are allowed: the widest walk).
  std::vector<double> compile_ms, mask_start_ms, mask_string_ms;
  size_t states = 0;
  for (int i = 0; i < a.compiles; ++i) {
    t0 = now_ms();
    const structured::Grammar g = structured::compile_json_schema(schema);
    compile_ms.push_back(now_ms() - t0);
    states = g.num_states();
  }
  {
    const structured::TokenGrammar& tg = *cx.check_grammar;
    const structured::GrammarMatcher start(tg.grammar());
    structured::GrammarMatcher in_string(tg.grammar());
    STEM_CHECK(in_string.advance(std::string_view("{\"name\":\"Al")), "the schema refuses {\"name\":\"Al");
    for (int i = 0; i < 10; ++i) {
      t0 = now_ms();
      (void)tg.compute_mask(start);
      mask_start_ms.push_back(now_ms() - t0);
      t0 = now_ms();
      (void)tg.compute_mask(in_string);
      mask_string_ms.push_back(now_ms() - t0);
    }
  }
  std::printf("schema (%zu states): compile median %.3f ms (max %.3f, %d runs; issue 19's target: under 50 ms)\n"
              "a mask computed cold (trie walk): at the start %.3f ms, inside a string %.3f ms (medians of 10)\n",
              states, median(compile_ms), *std::max_element(compile_ms.begin(), compile_ms.end()), a.compiles,
              median(mask_start_ms), median(mask_string_ms));
  std::fflush(stdout);

  // Warm-up of the whole path at every batch size (CUDA graphs are captured per padded batch).
  {
    Samples unused;
    for (int64_t B : a.batches) {
      Args w = a;
      w.tokens = std::min<int64_t>(a.tokens, a.warmup + 4);
      w.warmup = 0;
      run(cx, w, B, Mode::Mixed, 7, unused);
      if (B == 1) run(cx, w, B, Mode::Constrained, 8, unused);
    }
  }

  std::vector<Row> rows;
  for (int64_t B : a.batches) {
    std::vector<Mode> modes = {Mode::Unconstrained, Mode::Constrained};
    if (B >= 2) modes.push_back(Mode::Mixed);
    std::vector<Samples> pooled(modes.size());
    for (int r = 0; r < a.rounds; ++r)
      for (size_t m = 0; m < modes.size(); ++m)
        run(cx, a, B, modes[m], 100 + static_cast<uint64_t>(r) * 10 + m, pooled[m]);
    for (size_t m = 0; m < modes.size(); ++m) rows.push_back({B, modes[m], std::move(pooled[m])});
  }

  std::printf("\n%lld tokens a request (the first %d decode steps not timed), prompts of %lld, temperature %.2f, "
              "%d rounds; times in ms\n",
              static_cast<long long>(a.tokens), a.warmup, static_cast<long long>(a.prompt), a.temperature, a.rounds);
  std::printf("%-6s %-14s %9s %9s %9s %9s %10s %9s %8s %8s %11s %11s %12s %8s %9s\n", "batch", "config", "step",
              "mean", "p90", "max", "device", "host", "x step", "x dev", "ITL unc", "ITL con", "first token",
              "walks", "complete");
  nlohmann::json out = {{"model", a.model},
                        {"device", a.device},
                        {"backend", engine.backend().name()},
                        {"weights", a.load_format},
                        {"vocab_size", vocab->mask_size()},
                        {"mask_words", vocab->mask_words()},
                        {"tokens", a.tokens},
                        {"grammar_per_request", a.grammar_per_request},
                        {"prompt", a.prompt},
                        {"warmup", a.warmup},
                        {"rounds", a.rounds},
                        {"temperature", a.temperature},
                        {"vocab_trie_ms", vocab_ms},
                        {"schema_states", states},
                        {"compile_ms", median(compile_ms)},
                        {"compile_max_ms", *std::max_element(compile_ms.begin(), compile_ms.end())},
                        {"cold_mask_start_ms", median(mask_start_ms)},
                        {"cold_mask_in_string_ms", median(mask_string_ms)},
                        {"rows", nlohmann::json::array()}};
  for (const Row& r : rows) {
    const Samples* base = nullptr;
    for (const Row& u : rows)
      if (u.batch == r.batch && u.mode == Mode::Unconstrained) base = &u.s;
    const Samples& s = r.s;
    const double step = med(s.wall), dev = med(s.device);
    const double x_step = step / med(base->wall), x_dev = dev / med(base->device);
    // The unconstrained requests' inter-token time against the all-unconstrained run's.
    const double x_itl = med(s.itl_unc) / med(base->itl_unc);
    // And their mean: the steps where constrained requests of the batch walk the trie for a new
    // state (the batch waits for its masks) show there, not in the median.
    const double x_itl_mean = mean(s.itl_unc) / mean(base->itl_unc);
    std::printf("%-6lld %-14s %9s %9s %9s %9s %10s %9s %8s %8s %11s %11s %12s %8s %4lld/%-4lld\n",
                static_cast<long long>(r.batch), mode_name(r.mode), fmt(step).c_str(), fmt(mean(s.wall)).c_str(),
                fmt(percentile(s.wall, 0.9)).c_str(), fmt(percentile(s.wall, 1.0)).c_str(), fmt(dev).c_str(),
                fmt(med(s.host)).c_str(), fmt(x_step, "x").c_str(), fmt(x_dev, "x").c_str(), fmt(med(s.itl_unc)).c_str(),
                fmt(med(s.itl_con)).c_str(), fmt(med(s.first_token), "", 1).c_str(), fmt(med(s.walks), "", 0).c_str(),
                static_cast<long long>(s.complete), static_cast<long long>(s.constrained_seqs));
    if (r.mode == Mode::Mixed)
      std::printf("%-6s %-14s unconstrained requests' inter-token time: median %.3fx, mean %.3fx (%.3f ms) the "
                  "all-unconstrained run's\n", "", "", x_itl, x_itl_mean, mean(s.itl_unc));
    out["rows"].push_back({{"batch", r.batch},
                           {"config", mode_name(r.mode)},
                           {"steps_timed", s.wall.size()},
                           {"step_ms", num(step)},
                           {"step_mean_ms", num(mean(s.wall))},
                           {"step_p90_ms", num(percentile(s.wall, 0.9))},
                           {"step_max_ms", num(percentile(s.wall, 1.0))},
                           {"device_ms", num(dev)},
                           {"host_ms", num(med(s.host))},
                           {"step_vs_unconstrained", num(x_step)},
                           {"device_vs_unconstrained", num(x_dev)},
                           {"itl_unconstrained_ms", num(med(s.itl_unc))},
                           {"itl_constrained_ms", num(med(s.itl_con))},
                           {"itl_unconstrained_vs_unconstrained_run", num(x_itl)},
                           {"itl_unconstrained_mean_ms", num(mean(s.itl_unc))},
                           {"itl_constrained_mean_ms", num(mean(s.itl_con))},
                           {"itl_unconstrained_mean_vs_unconstrained_run", num(x_itl_mean)},
                           {"first_token_ms", num(med(s.first_token))},
                           {"mask_walks", num(med(s.walks))},
                           {"constrained_seqs", s.constrained_seqs},
                           {"complete_values", s.complete}});
  }
  std::printf("step: median wall of Engine::step() for the whole batch; device: the backend's GPU time of the step "
              "(cpu: none); host: step wall - forward_sample; x: against the unconstrained run of the same batch; "
              "walks: masks computed (per run, all requests); complete: constrained sequences that reached EOS "
              "(their JSON checked against the schema)\n");
  if (!a.json.empty()) std::ofstream(a.json) << out.dump(1) << "\n";
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_constrained: %s\n", e.what());
  return 1;
}
