// The whole model on the GPU (engine → CUDA backend) against Hugging Face transformers' fp32
// reference: teacher-forced logits at every position, and greedy continuations.
//
// Models: the committed tiny fixtures (tests/fixtures/models/*, head_dim 16 and 32) and, when
// STEM_GPU_MODEL_FIXTURES names a folder, the same six variants regenerated there with head_dim 64
// and 128 (scripts/gpu_model_test.sh makes them on the GPU machine with the fixture generator).
// And a real converted model (Qwen2.5-Coder, models/prepare/) when STEM_HF_REFERENCE names the
// reference folder that models/prepare/validate_model.py wrote on the GPU machine (transformers in
// bf16 on the GPU, a 4K-token prompt): the CPU test's check (tests/models/hf_reference_check.h) on
// the CUDA backend (scripts/gpu_model_test.sh real).
// The CUDA attention kernels take head_dim 64 or 128 only: a committed fixture with another head_dim
// must be refused at load with that reason; the regenerated ones carry the numerical check.
//
// Tolerances. Logits: relative error ≤ 2e-2 over a sequence (the reference is fp32; we compute in
// bf16 with f32 accumulation, see test_cuda_vs_cpu.cc for the budget). Greedy: the tokens must be
// identical up to the first step whose reference top-two margin is within 2·2e-2·rms(logits) (a
// per-logit error of 2e-2·rms on each of the two can swap them); from there on the continuations
// may part, and the rest is not compared.
#include <fstream>

#include "engine/engine.h"
#include "models/cuda/backend.h"
#include "tests/gpu_model/gpu_model_util.h"
#include "tests/models/hf_reference_check.h"

using namespace stem;
using namespace stem::gpu_model_test;
namespace fs = std::filesystem;

namespace {

constexpr double kTolerance = 2e-2;

nlohmann::json read_json(const fs::path& p) {
  std::ifstream in(p);
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

void check_model(const fs::path& dir, int64_t chunk) {
  STEM_REQUIRE_GPU();
  const std::string name = dir.filename().string();
  const ModelConfig config = load_model_config(dir);
  REQUIRE((config.head_dim == 64 || config.head_dim == 128));
  const nlohmann::json ref = read_json(dir / "reference.json");
  EngineOptions opts;
  opts.device = "cuda";
  opts.load_tokenizer = false;
  opts.kv_cache_tokens = 1024;
  opts.max_num_batched_tokens = chunk;  // several prefill chunks: chunking is covered too
  Engine engine(dir, opts);
  const int64_t V = engine.config().vocab_size;

  double sum_sq = 0;
  int64_t count = 0;
  for (const auto& seq : ref["teacher_forced"]) {
    const auto ids = seq["input_ids"].get<std::vector<int32_t>>();
    Tensor logits = engine.score(ids);
    REQUIRE(logits.shape() == std::vector<int64_t>{static_cast<int64_t>(ids.size()), V});
    std::vector<float> want;
    for (const auto& row : seq["logits"])
      for (const auto& x : row) want.push_back(x.get<float>());
    for (float x : want) sum_sq += double{x} * x;
    count += static_cast<int64_t>(want.size());
    const std::vector<float> got(logits.ptr<float>(), logits.ptr<float>() + logits.numel());
    STEM_CHECK_CLOSE("model_cuda_vs_hf " + name + " len " + std::to_string(ids.size()) + " chunk " +
                         std::to_string(chunk),
                     got, want, kTolerance);
  }
  const double margin_floor = 2 * kTolerance * std::sqrt(sum_sq / static_cast<double>(count));

  for (const auto& g : ref["greedy"]) {
    GenerateRequest req;
    req.prompt = g["prompt_ids"].get<std::vector<int32_t>>();
    const auto want = g["generated_ids"].get<std::vector<int32_t>>();
    const auto margins = g["top2_margins"].get<std::vector<double>>();
    req.sampling.temperature = 0;
    req.stop.max_tokens = static_cast<int32_t>(want.size());
    req.stop.ignore_eos = true;
    const GenerateResult r = engine.generate(req);
    REQUIRE(r.tokens.size() == want.size());
    size_t same = 0;
    while (same < want.size() && r.tokens[same] == want[same]) ++same;
    INFO(name << " greedy from " << req.prompt.size() << " tokens: identical for " << same << " of " << want.size()
              << " steps; margin floor " << margin_floor);
    if (same < want.size()) {
      INFO("first difference at step " << same << ": reference margin " << margins[same]);
      CHECK(margins[same] <= margin_floor);
      gpu_test::report_error("model_greedy_parted_at_margin " + name + " step " + std::to_string(same) +
                                 " floor " + std::to_string(margin_floor),
                             margins[same]);
    }
    gpu_test::report_error("model_greedy_diverged_steps " + name, static_cast<double>(want.size() - same));
  }
}

std::vector<fs::path> model_dirs(const fs::path& root) {
  std::vector<fs::path> dirs;
  if (fs::is_directory(root))
    for (const auto& e : fs::directory_iterator(root))
      if (fs::exists(e.path() / "reference.json")) dirs.push_back(e.path());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

}  // namespace

TEST_CASE("committed tiny fixtures on the CUDA backend: checked, or refused by name") {
  STEM_REQUIRE_GPU();
  const std::vector<fs::path> dirs = model_dirs(fixtures_dir() / "models");
  REQUIRE(dirs.size() >= 6);
  for (const fs::path& dir : dirs) {
    const int64_t head_dim = load_model_config(dir).head_dim;
    DYNAMIC_SECTION(dir.filename().string() << " (head_dim " << head_dim << ")") {
      if (head_dim == 64 || head_dim == 128) {
        check_model(dir, 7);
      } else {
        // What the kernels do not take is refused at load, before any weight, with the reason.
        EngineOptions opts;
        opts.device = "cuda";
        opts.load_tokenizer = false;
        opts.kv_cache_tokens = 1024;
        CHECK_THROWS_WITH(Engine(dir, opts), Catch::Contains("head_dim " + std::to_string(head_dim) +
                                                             " is not supported"));
      }
    }
  }
}

TEST_CASE("head_dim 64/128 fixtures regenerated by transformers, on the CUDA backend") {
  STEM_REQUIRE_GPU();
  const char* root = std::getenv("STEM_GPU_MODEL_FIXTURES");
  if (!root || !*root) SKIP("STEM_GPU_MODEL_FIXTURES is not set (scripts/gpu_model_test.sh makes these fixtures)");
  const std::vector<fs::path> dirs = model_dirs(root);
  REQUIRE(dirs.size() >= 6);
  for (const fs::path& dir : dirs)
    for (int64_t chunk : {7, 64}) {
      DYNAMIC_SECTION(dir.filename().string() << " chunk " << chunk) { check_model(dir, chunk); }
    }
}

TEST_CASE("a converted real model against its transformers reference, on the CUDA backend", "[.][real]") {
  STEM_REQUIRE_GPU();
  const char* dir = std::getenv("STEM_HF_REFERENCE");
  if (!dir || !*dir) SKIP("STEM_HF_REFERENCE is not set (scripts/gpu_model_test.sh real makes the reference)");
  EngineOptions opts;
  opts.device = "cuda";
  opts.kv_cache_tokens = 8192;
  opts.max_model_len = 8192;
  const auto result = hf_reference::check_reference(dir, opts);
  for (const auto& tf : result["teacher_forced"])
    gpu_test::report_error("real_model_logits " + tf["name"].get<std::string>(), tf["relative"].get<double>());
}
