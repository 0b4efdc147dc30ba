// Bad model folders through the real binary: one clear message naming the file and the reason,
// a non-zero exit, no crash.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/test_util.h"

namespace fs = std::filesystem;
using stem::test::TempDir;
using Catch::Matchers::Contains;

namespace {

struct Run {
  int exit_code;
  std::string output;
};

Run generate_with(const fs::path& model) {
  const std::string cmd = stem::test::build_dir() + "/server/stemserve generate --model '" + model.string() +
                          "' --prompt hi --max-tokens 1 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out};
}

// A copy of a tiny fixture model (config.json + model.safetensors) to break.
fs::path copy_tiny_model(const TempDir& dir) {
  const fs::path src = fs::path(stem::test::fixtures_dir()) / "models" / "llama-gqa";
  fs::copy_file(src / "config.json", dir / "config.json");
  fs::copy_file(src / "model.safetensors", dir / "model.safetensors");
  return dir.path();
}

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Rewrites the safetensors header with `edit` applied.
void edit_header(const fs::path& file, const std::function<void(nlohmann::json&)>& edit) {
  std::string bytes = read(file);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  auto header = nlohmann::json::parse(bytes.substr(8, n));
  edit(header);
  std::string h = header.dump();
  uint64_t m = h.size();
  std::string out(8, '\0');
  std::memcpy(out.data(), &m, 8);
  stem::test::write_file(file, out + h + bytes.substr(8 + n));
}

void expect_failure(const Run& r, const std::string& must_contain) {
  INFO(r.output);
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.output, Contains(must_contain));
  CHECK_THAT(r.output, Contains("[error]"));
}

}  // namespace

TEST_CASE("a model folder that does not exist") {
  expect_failure(generate_with("/nonexistent/stemserve-model"), "/nonexistent/stemserve-model: model folder does not exist");
}

TEST_CASE("a model folder without config.json") {
  TempDir dir;
  copy_tiny_model(dir);
  fs::remove(dir / "config.json");
  expect_failure(generate_with(dir.path()), "config.json: cannot open");
}

TEST_CASE("a model folder without weights") {
  TempDir dir;
  copy_tiny_model(dir);
  fs::remove(dir / "model.safetensors");
  expect_failure(generate_with(dir.path()), "no model.safetensors or model.safetensors.index.json");
}

TEST_CASE("a truncated safetensors file") {
  TempDir dir;
  copy_tiny_model(dir);
  std::string bytes = read(dir / "model.safetensors");
  stem::test::write_file(dir / "model.safetensors", bytes.substr(0, bytes.size() / 2));
  expect_failure(generate_with(dir.path()), "model.safetensors: tensor '");
}

TEST_CASE("a safetensors header that is not JSON") {
  TempDir dir;
  copy_tiny_model(dir);
  std::string bytes = read(dir / "model.safetensors");
  bytes[8] = '#';
  stem::test::write_file(dir / "model.safetensors", bytes);
  expect_failure(generate_with(dir.path()), "model.safetensors: header is not valid JSON");
}

TEST_CASE("a tensor with an unknown dtype") {
  TempDir dir;
  copy_tiny_model(dir);
  edit_header(dir / "model.safetensors", [](nlohmann::json& h) { h["model.norm.weight"]["dtype"] = "F8_E5M2"; });
  expect_failure(generate_with(dir.path()), "tensor 'model.norm.weight' has dtype 'F8_E5M2'");
}

TEST_CASE("out-of-range and overlapping offsets") {
  TempDir dir;
  copy_tiny_model(dir);
  SECTION("past the end") {
    edit_header(dir / "model.safetensors", [](nlohmann::json& h) {
      h["model.norm.weight"]["data_offsets"] = {1000000000, 1000000256};
    });
    expect_failure(generate_with(dir.path()), "past the data section");
  }
  SECTION("overlapping") {
    edit_header(dir / "model.safetensors", [](nlohmann::json& h) {
      h["model.norm.weight"]["data_offsets"] = h["model.embed_tokens.weight"]["data_offsets"];
      h["model.norm.weight"]["shape"] = h["model.embed_tokens.weight"]["shape"];
    });
    expect_failure(generate_with(dir.path()), "overlap");
  }
}

TEST_CASE("a missing tensor and a tensor of the wrong shape") {
  TempDir dir;
  copy_tiny_model(dir);
  SECTION("missing") {
    edit_header(dir / "model.safetensors", [](nlohmann::json& h) { h.erase("model.layers.1.mlp.up_proj.weight"); });
    expect_failure(generate_with(dir.path()), "tensor 'model.layers.1.mlp.up_proj.weight' is missing");
  }
  SECTION("wrong shape") {
    auto cfg = nlohmann::json::parse(read(dir / "config.json"));
    cfg["intermediate_size"] = 96;
    stem::test::write_file(dir / "config.json", cfg.dump());
    expect_failure(generate_with(dir.path()), "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [128,64], config says [96,64]");
  }
}

TEST_CASE("a config with an unknown architecture") {
  TempDir dir;
  copy_tiny_model(dir);
  auto cfg = nlohmann::json::parse(read(dir / "config.json"));
  cfg["architectures"] = {"MambaForCausalLM"};
  cfg.erase("model_type");
  stem::test::write_file(dir / "config.json", cfg.dump());
  expect_failure(generate_with(dir.path()), "architecture 'MambaForCausalLM' is not supported");
}

TEST_CASE("a tokenizer that does not load") {
  TempDir dir;
  copy_tiny_model(dir);
  SECTION("no tokenizer at all") { expect_failure(generate_with(dir.path()), "tokenizer"); }
  SECTION("tokenizer.json that is not JSON") {
    stem::test::write_file(dir / "tokenizer.json", "{\"model\": ");
    expect_failure(generate_with(dir.path()), "tokenizer.json");
  }
  SECTION("tokenizer.model that is not a SentencePiece model") {
    stem::test::write_file(dir / "tokenizer.model", "not a protobuf");
    expect_failure(generate_with(dir.path()), "tokenizer.model");
  }
}
