// The llama-gqa fixture (3 layers, random weights) with room for 2K positions (its config says
// 512), for engine tests with prompts long enough for Stem's blocks.
#pragma once
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

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

}  // namespace stem::test
