// Stem sparse prefill in the engine. On the tiny llama-gqa fixture (random weights, made able to
// take 2K-token prompts): the per-request override both ways, short prompts staying dense, and
// chunked prefill (256-token steps, and a budget that is no multiple of 128, which the scheduler
// aligns) giving the unchunked tokens and log-probabilities (within rounding, tests/rounding.h)
// and selecting exactly the same blocks. On the default model (SmolLM2-135M),
// a ~1.1K-token prompt with min_prompt_len 1024 and a small budget so that selection really drops
// key blocks: Stem and dense both continue the prompt sensibly, and the sparse path really runs.
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "engine/engine.h"
#include "text/tokenizer.h"
#include "tests/engine/tiny_model.h"
#include "tests/rounding.h"
#include "tests/test_util.h"

using namespace stem;
using stem::test::greedy;
namespace fs = std::filesystem;

namespace {

bool have_model() { return fs::exists(test::default_model_dir() / "model.safetensors"); }

EngineOptions stem_options(int64_t batch_tokens, SparsePrefill mode) {
  EngineOptions o;
  o.max_model_len = 2048;
  o.max_num_batched_tokens = batch_tokens;
  o.sparse_prefill = mode;
  o.stem.min_prompt_len = 1024;
  o.stem.budget_rate = 0.25;  // k_s = a quarter of the blocks: past the sinks and window, most go
  o.stem.sink_blocks = 1;
  o.stem.window_blocks = 2;
  return o;
}

std::unique_ptr<Engine> load_tiny(int64_t batch_tokens, SparsePrefill mode = SparsePrefill::Stem) {
  EngineOptions o = stem_options(batch_tokens, mode);
  o.load_tokenizer = false;
  o.stem.dense_layers = 1;  // of 3
  return std::make_unique<Engine>(test::tiny_model_2k().path(), o);
}

std::vector<int32_t> random_prompt(int64_t n) {
  std::mt19937_64 rng(5);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t& x : t) x = static_cast<int32_t>(3 + rng() % 250);
  return t;
}

struct Run {
  GenerateResult result;
  StemStepStats stem;  // summed over the steps
  int64_t stem_seqs = 0;
  int64_t steps = 0;
};

Run run(Engine& e, const GenerateRequest& r) {
  Run out;
  bool done = false;
  e.add_request(r, [&](const TokenEvent& ev) {
    if (ev.token >= 0) {
      out.result.tokens.push_back(ev.token);
      out.result.samples.push_back(ev.sample);
    }
    out.result.text += ev.text;
    done |= ev.finished;
  });
  while (!done) {
    const StepStats s = e.step();
    CHECK(s.device_ms == -1);  // the CPU backend measures no device time
    out.stem.sparse_blocks += s.stem.sparse_blocks;
    out.stem.causal_key_blocks += s.stem.causal_key_blocks;
    out.stem.skipped_key_blocks += s.stem.skipped_key_blocks;
    out.stem_seqs += s.stem_seqs;
    ++out.steps;
  }
  return out;
}

// The tiny model: 3 layers; the longest reduction is over the 1500 keys of the prompt.
const double kTol = test::rounding_tolerance(3, 1500);

// `a`, the same prompt computed in another shape, against `ref`: the same blocks, the same greedy
// tokens and log-probabilities within rounding.
void check_same_run(const Run& a, const Run& ref) {
  CHECK(a.stem.sparse_blocks == ref.stem.sparse_blocks);
  CHECK(a.stem.skipped_key_blocks == ref.stem.skipped_key_blocks);
  const size_t n = test::check_same_greedy(ref.result.tokens, ref.result.samples, a.result.tokens, kTol);
  REQUIRE(a.result.samples.size() >= n);
  for (size_t i = 0; i < n; ++i) {
    const float lp = ref.result.samples[i].logprob;
    CHECK(std::abs(a.result.samples[i].logprob - lp) <= kTol * std::max(1.f, std::abs(lp)));
  }
}

}  // namespace

TEST_CASE("stem engine: per-request mode, short prompts, chunked prefill (tiny model)") {
  const std::vector<int32_t> prompt = random_prompt(1500);  // 12 blocks, k_s = 3
  auto engine = load_tiny(2048);
  const Run stem = run(*engine, greedy(prompt, 4, std::nullopt));
  CHECK(stem.steps == 4);
  CHECK(stem.stem_seqs == 1);  // the prefill step; decode rows are dense
  CHECK(stem.stem.sparse_blocks == 9 * 2);
  CHECK(stem.stem.skipped_key_blocks > 0);
  CHECK(engine->counters().stem_sparse_blocks == stem.stem.sparse_blocks);

  const Run dense = run(*engine, greedy(prompt, 4, SparsePrefill::Dense));
  CHECK(dense.stem.sparse_blocks == 0);
  CHECK(dense.stem_seqs == 0);
  // Stem moves the first log-probability by far more than the rounding the chunked runs are held to.
  CHECK(std::abs(dense.result.samples[0].logprob - stem.result.samples[0].logprob) > 10 * kTol);

  const Run short_prompt = run(*engine, greedy(random_prompt(1000), 2, std::nullopt));
  CHECK(short_prompt.stem.sparse_blocks == 0);

  // An engine whose default is dense: the same two runs, by request.
  auto dense_engine = load_tiny(2048, SparsePrefill::Dense);
  check_same_run(run(*dense_engine, greedy(prompt, 4, std::nullopt)), dense);
  check_same_run(run(*dense_engine, greedy(prompt, 4, SparsePrefill::Stem)), stem);

  // Chunked: 256-token steps, and 300-token steps that the scheduler cuts back to 256.
  for (int64_t budget : {256, 300}) {
    INFO("max_num_batched_tokens " << budget);
    auto chunked = load_tiny(budget);
    const Run c = run(*chunked, greedy(prompt, 4, std::nullopt));
    CHECK(c.steps == 6 + 3);  // 5 chunks of 256 and one of 220, then 3 decode steps
    check_same_run(c, stem);
  }
}

// "1, 2, 3, ..., 239,": a pattern with a plain continuation (" 240, 241, ..."), ~1.1K tokens.
std::string counting_prompt() {
  std::string s;
  for (int i = 1; i < 240; ++i) s += std::to_string(i) + ", ";
  s.pop_back();
  return s;
}

TEST_CASE("stem engine: the default model continues a long prompt sensibly with Stem and dense") {
  if (!have_model()) SKIP("default model not prepared");
  Engine engine(test::default_model_dir(), stem_options(2048, SparsePrefill::Stem));
  const std::vector<int32_t> prompt = engine.tokenizer().encode(counting_prompt(), true);
  const int64_t n = static_cast<int64_t>(prompt.size());
  INFO("prompt tokens: " << n);
  REQUIRE(n > 1024);
  REQUIRE(n <= 1400);
  const int64_t nb = (n + 127) / 128, ks = nb / 4;

  const Run dense = run(engine, greedy(prompt, 8, SparsePrefill::Dense));
  const Run stem = run(engine, greedy(prompt, 8, std::nullopt));
  CHECK(dense.stem.sparse_blocks == 0);
  // Blocks ks..nb-1 are sparse in the 28 layers past the 2 dense ones.
  CHECK(stem.stem.sparse_blocks == (nb - ks) * 28);
  INFO("skipped " << stem.stem.skipped_key_blocks << " of " << stem.stem.causal_key_blocks << " key blocks");
  CHECK(stem.stem.skipped_key_blocks * 4 > stem.stem.causal_key_blocks);

  INFO("dense: '" << dense.result.text << "', stem: '" << stem.result.text << "'");
  CHECK(dense.result.text.rfind(" 240, 24", 0) == 0);
  CHECK(stem.result.text.rfind(" 240, 24", 0) == 0);
  // Skipping most blocks moves the numbers, not the model's confidence in the obvious token.
  CHECK(stem.result.samples[0].logprob > -0.5f);
}
