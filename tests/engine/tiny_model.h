// The llama-gqa fixture (3 layers, random weights) with room for 2K positions (its config says
// 512), for engine tests with prompts long enough for Stem's blocks.
#pragma once
#include <filesystem>
#include <fstream>
#include <optional>
#include <vector>
#include <nlohmann/json.hpp>

#include "engine/request.h"
#include "tests/test_util.h"

namespace stem::test {

inline const TempDir& tiny_model_2k() {
  static const TempDir dir = [] {
    TempDir d;
    const std::filesystem::path src = std::filesystem::path(fixtures_dir()) / "models" / "llama-gqa";
    nlohmann::json config = nlohmann::json::parse(std::ifstream(src / "config.json"));
    config["max_position_embeddings"] = 2048;
    write_file(d / "config.json", config.dump());
    std::filesystem::copy_file(src / "model.safetensors", d / "model.safetensors");
    return d;
  }();
  return dir;
}

// A greedy request that reports the top-2 logprobs (their margin tells where rounding may swap
// greedy tokens: tests/rounding.h) and ignores EOS; mode: Stem or dense (unset: the engine's).
inline GenerateRequest greedy(std::vector<int32_t> prompt, int32_t max_tokens, std::optional<SparsePrefill> mode = {}) {
  GenerateRequest r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0;
  r.sampling.logprobs = true;
  r.sampling.top_logprobs = 2;
  r.stop.max_tokens = max_tokens;
  r.stop.ignore_eos = true;
  r.sparse_prefill = mode;
  return r;
}

}  // namespace stem::test
