// Prefix caching on the GPU (issue 17, docs/prefix_caching.md): the time to first token of a long
// prompt whose prefix an earlier request computed, beside the same prompt computed in full (the
// peer: the same engine with prefix caching off), for dense attention and Stem under each
// schedule. Random (dummy) weights of any config.json (Llama-3.1-8B's by default), the whole
// engine (scheduler, chunked prefill, prefix cache, CUDA backend).
//
// Each row: a document of L − suffix random tokens, then `runs` prompts that each append their own
// suffix of `suffix` random tokens (a new question about the same document). The first prompt
// computes the document (cold); the others find it cached (when caching is on). TTFT is the wall
// time of a request for one token, median over the runs after the first (the JSON lists each,
// with the forward passes' wall and device time in it: each question's line shows the split).
//
// --chat: a multi-turn chat instead, growing to L tokens: each turn adds `suffix` user tokens to
// the conversation, and the model's answer of --answer tokens (generated, so a cache hit covers it
// only where the engine caches decoded tokens) joins the next turn's prompt. Each turn's time to
// first token is printed, caching off (the peer) and on.
//
// --vary: question r is `suffix` − r tokens long instead (each question a step of a new size, as
// real questions are: the costs a new shape pays once, GEMM plans among them, show in every TTFT).
// --modes dense,paper,threshold and --caching on,off: a subset of the rows. STEM_WARMUP=0 (the CUDA
// backend's load-time GEMM tuning off) shows what the first question paid before it.
//
//   bench_prefix_cache [--config F] [--lengths 32768,131072] [--suffix 512] [--runs 4] [--vary]
//                      [--modes dense,paper,threshold] [--caching on,off]
//                      [--threshold 0.8738] [--chat] [--answer 100] [--json FILE]
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "bench/bench_util.h"
#include "engine/engine.h"
#include "kernels/check.h"

using namespace stem;
using bench::median;
using bench::now_ms;
using bench::parse_list;
namespace fs = std::filesystem;

namespace {

struct Args {
  std::string config = "bench/configs/llama-3.1-8b.json";
  std::vector<int64_t> lengths = {32768, 131072};
  int64_t suffix = 512;
  bool vary = false;
  std::vector<std::string> modes = {"dense", "paper", "threshold"};
  std::vector<bool> caching = {false, true};
  int runs = 4;
  double threshold = 0.8738;  // the threshold selector's default (docs/stem.md)
  bool chat = false;
  int64_t answer = 100;
  std::string json;
};

Args parse(int argc, char** argv) {
  Args a;
  bench::parse_flags(argc, argv, {"--chat", "--vary"}, [&a](const std::string& k, const std::string& v) {
    if (k == "--config") a.config = v;
    else if (k == "--lengths") a.lengths = parse_list(v);
    else if (k == "--suffix") a.suffix = std::stoll(v);
    else if (k == "--runs") a.runs = std::stoi(v);
    else if (k == "--threshold") a.threshold = std::stod(v);
    else if (k == "--json") a.json = v;
    else if (k == "--chat") a.chat = true;
    else if (k == "--vary") a.vary = true;
    else if (k == "--modes") a.modes = bench::split(v, ',');
    else if (k == "--caching") {
      a.caching.clear();
      for (const std::string& c : bench::split(v, ',')) {
        STEM_CHECK(c == "on" || c == "off", "--caching takes on, off or on,off; got ", c);
        a.caching.push_back(c == "on");
      }
    }
    else if (k == "--answer") a.answer = std::stoll(v);
    else throw Error("unknown argument " + k);
  });
  STEM_CHECK(a.runs >= 2, "--runs must be at least 2 (the first computes the document)");
  STEM_CHECK(a.suffix > (a.vary ? a.runs : 0), "--suffix must be positive (with --vary: more than --runs)");
  STEM_CHECK(a.answer > 0, "--answer must be positive");
  return a;
}

struct Mode {
  std::string name;
  SparsePrefill prefill;
  StemSettings stem;
};

struct Row {
  int64_t length = 0;
  std::string mode;
  bool caching = false;
  double cold_ms = 0, warm_ms = 0;
  int64_t cached_tokens = 0;
  std::vector<double> each_ms;          // every request's TTFT, in order (the first is cold)
  std::vector<double> each_forward_ms;  // of each TTFT, the forward passes (wall) ...
  std::vector<double> each_device_ms;   // ... and their device time
  std::vector<int64_t> each_prompt;     // --chat: each turn's prompt length
  std::vector<int64_t> each_cached;     // and its cached tokens
};

Engine make_engine(const fs::path& dir, const Mode& mode, bool caching) {
  EngineOptions o;
  o.device = "cuda";
  o.dummy_weights = true;
  o.load_tokenizer = false;
  o.sparse_prefill = mode.prefill;
  o.stem = mode.stem;
  o.enable_prefix_caching = caching;
  return Engine(dir, o);
}

// One request: its time to first token, where that time went, and the tokens it generated.
struct Timed {
  double ttft_ms = 0;
  double forward_ms = 0;  // of the TTFT: the backend's forward passes (wall, host work included)
  double device_ms = 0;   // of those: their time on the device
  int64_t cached = 0;
  std::vector<int32_t> tokens;
};

// The engine driven step by step (as Engine::generate does), so that the steps up to the first
// token can be split into the engine's own host work (scheduling, the prefix-cache lookup, page
// tables), the forward passes' host work (launches, GEMM plans, uploads) and their device time.
Timed timed_generate(Engine& engine, std::vector<int32_t> prompt, int64_t max_tokens) {
  GenerateRequest req;
  req.prompt = std::move(prompt);
  req.sampling.temperature = 0;
  req.stop.max_tokens = max_tokens;
  req.stop.ignore_eos = true;
  Timed t;
  bool first = false, done = false;
  std::string error;
  const double t0 = now_ms();
  engine.add_request(std::move(req), [&](const TokenEvent& e) {
    if (e.token >= 0) {
      if (!first) t.ttft_ms = now_ms() - t0;
      first = true;
      t.tokens.push_back(e.token);
    }
    if (e.finished) {
      done = true;
      t.cached = e.cached_tokens;
      error = e.error;
    }
  });
  while (!done) {
    const bool before_first = !first;
    const StepStats s = engine.step();
    if (before_first) {
      t.forward_ms += s.forward_seconds * 1e3;
      t.device_ms += std::max(0.0, s.device_ms);
    }
  }
  STEM_CHECK(error.empty(), "request failed: ", error);
  STEM_CHECK(first, "request finished without a token");
  return t;
}

// One engine (one mode, caching on or off): the document's first prompt, then runs − 1 more.
Row measure(const fs::path& dir, const Mode& mode, bool caching, int64_t L, const Args& a, uint64_t seed) {
  Engine engine = make_engine(dir, mode, caching);
  std::mt19937_64 rng(seed);
  const auto vocab = static_cast<uint64_t>(engine.config().vocab_size);
  auto tokens = [&](int64_t n) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
    return t;
  };
  Row row;
  row.length = L;
  row.mode = mode.name;
  row.caching = caching;
  if (a.chat) {
    // Turns until the next would pass L: the conversation so far, then this turn's user tokens.
    std::vector<int32_t> conversation;
    while (static_cast<int64_t>(conversation.size()) + a.suffix + a.answer <= L) {
      const std::vector<int32_t> user = tokens(a.suffix);
      conversation.insert(conversation.end(), user.begin(), user.end());
      const Timed t = timed_generate(engine, conversation, a.answer);
      row.each_ms.push_back(t.ttft_ms);
      row.each_forward_ms.push_back(t.forward_ms);
      row.each_device_ms.push_back(t.device_ms);
      row.each_prompt.push_back(static_cast<int64_t>(conversation.size()));
      row.each_cached.push_back(t.cached);
      conversation.insert(conversation.end(), t.tokens.begin(), t.tokens.end());
    }
    STEM_CHECK(!row.each_ms.empty(), "--chat: no turn of ", a.suffix, " + ", a.answer, " tokens fits in ", L);
    row.cold_ms = row.each_ms.front();
    row.warm_ms = row.each_ms.back();  // the last turn, the longest conversation
    row.cached_tokens = row.each_cached.back();
    return row;
  }
  const std::vector<int32_t> doc = tokens(L - a.suffix);
  std::vector<double> warm;
  for (int r = 0; r < a.runs; ++r) {
    std::vector<int32_t> prompt = doc;
    const std::vector<int32_t> question = tokens(a.vary ? a.suffix - r : a.suffix);
    prompt.insert(prompt.end(), question.begin(), question.end());
    const Timed t = timed_generate(engine, std::move(prompt), 1);
    row.each_ms.push_back(t.ttft_ms);
    row.each_forward_ms.push_back(t.forward_ms);
    row.each_device_ms.push_back(t.device_ms);
    if (r > 0) {
      warm.push_back(t.ttft_ms);
      row.cached_tokens = t.cached;
    }
  }
  row.cold_ms = row.each_ms.front();
  row.warm_ms = median(warm);
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    const fs::path dir = fs::temp_directory_path() / ("bench_prefix_cache_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    fs::copy_file(a.config, dir / "config.json", fs::copy_options::overwrite_existing);

    StemSettings paper;  // the paper's schedule: only the leading dense blocks are shareable
    StemSettings causal;
    causal.selector = StemSelector::Threshold;
    causal.threshold = a.threshold;
    std::vector<Mode> modes;
    for (const std::string& m : a.modes) {
      if (m == "dense") modes.push_back({"dense", SparsePrefill::Dense, paper});
      else if (m == "paper") modes.push_back({"stem (paper schedule)", SparsePrefill::Stem, paper});
      else if (m == "threshold")
        modes.push_back({"stem (threshold " + std::to_string(a.threshold).substr(0, 6) + ")", SparsePrefill::Stem, causal});
      else throw Error("--modes takes dense, paper and threshold; got " + m);
    }
    std::vector<Row> rows;
    std::printf("%-8s %-28s %-8s %12s %12s %14s\n", "prompt", "mode", "caching",
                a.chat ? "turn 1 ms" : "cold TTFT ms", a.chat ? "last turn ms" : "next TTFT ms", "cached tokens");
    uint64_t seed = 1;
    for (int64_t L : a.lengths)
      for (const Mode& m : modes)
        for (bool caching : a.caching) {
          const Row r = measure(dir, m, caching, L, a, seed++);
          std::printf("%-8lld %-28s %-8s %12.1f %12.1f %14lld\n", static_cast<long long>(L), m.name.c_str(),
                      caching ? "on" : "off", r.cold_ms, r.warm_ms, static_cast<long long>(r.cached_tokens));
          if (a.chat)
            for (size_t t = 0; t < r.each_ms.size(); ++t)
              std::printf("    turn %2zu: prompt %6lld, TTFT %8.1f ms (forward %8.1f, device %8.1f), cached %6lld\n",
                          t + 1, static_cast<long long>(r.each_prompt[t]), r.each_ms[t], r.each_forward_ms[t],
                          r.each_device_ms[t], static_cast<long long>(r.each_cached[t]));
          else
            // Where each question's TTFT went: the forward passes' wall time and device time (the
            // rest is the engine's host work); the first after the document apart from the others.
            for (size_t q = 1; q < r.each_ms.size(); ++q)
              std::printf("    question %2zu: TTFT %8.1f ms = forward %8.1f (device %8.1f) + engine %6.1f\n", q,
                          r.each_ms[q], r.each_forward_ms[q], r.each_device_ms[q],
                          r.each_ms[q] - r.each_forward_ms[q]);
          std::fflush(stdout);
          rows.push_back(r);
        }
    fs::remove_all(dir);
    if (!a.json.empty()) {
      nlohmann::json out = nlohmann::json::array();
      for (const Row& r : rows)
        out.push_back({{"prompt", r.length}, {"mode", r.mode}, {"caching", r.caching}, {"cold_ms", r.cold_ms},
                       {"next_ms", r.warm_ms}, {"cached_tokens", r.cached_tokens}, {"suffix", a.suffix}, {"vary", a.vary},
                       {"runs", a.runs}, {"each_ms", r.each_ms}, {"chat", a.chat}, {"each_prompt", r.each_prompt},
                       {"each_cached", r.each_cached}, {"each_forward_ms", r.each_forward_ms},
                       {"each_device_ms", r.each_device_ms}});
      std::ofstream(a.json) << out.dump(1) << "\n";
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_prefix_cache: %s\n", e.what());
    return 1;
  }
}
