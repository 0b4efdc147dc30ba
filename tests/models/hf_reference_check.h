// A converted real model (models/prepare/) against the Hugging Face transformers reference that
// models/prepare/validate_model.py writes: a folder with reference.json and the teacher-forced
// logits as raw little-endian rows (f32 or bf16). One check for both backends:
// tests/models/test_hf_reference.cc runs it on the CPU, tests/gpu_model/test_cuda_hf_reference.cc
// on the GPU, each when STEM_HF_REFERENCE names such a folder (skipped otherwise: no CI test needs
// a real model).
//
// What it compares, and prints (and writes as JSON to STEM_HF_REFERENCE_RESULT when set):
//   tokenizer   our ids for each text equal the `tokenizers` package's ids;
//   chat        our rendering of each conversation equals transformers' apply_chat_template,
//               and its ids;
//   logits      teacher-forced logits at every position: max and mean absolute error, relative
//               error (Frobenius, whole sequence), worst row's relative error, argmax agreement;
//               checked against the reference's own tolerances (they depend on its dtype);
//   greedy      greedy continuations (eos ignored, as many tokens as the reference made): equal up
//               to the first step whose reference top-two margin is within 2x the largest
//               per-logit error measured above (below that floor a swap is rounding, not a bug);
//               where all are equal, our detokenized text equals transformers' decode.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "text/tokenizer.h"
#include "tests/catch.h"

namespace stem::hf_reference {

struct LogitStats {
  int64_t rows = 0;
  double max_abs = 0, mean_abs = 0, rel = 0, worst_row_rel = 0, ref_rms = 0;
  int64_t argmax_same = 0;
};

inline nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

// Reads rows [0, rows) of a raw [rows, vocab] file of f32 or bf16 (the reference's dtype).
inline std::vector<float> read_logits(const std::filesystem::path& p, const std::string& dtype, int64_t rows,
                                      int64_t vocab) {
  REQUIRE((dtype == "f32" || dtype == "bf16"));
  const size_t n = static_cast<size_t>(rows * vocab), width = dtype == "f32" ? 4 : 2;
  REQUIRE(std::filesystem::file_size(p) == n * width);
  std::ifstream in(p, std::ios::binary);
  std::vector<float> out(n);
  if (width == 4) {
    in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(n * 4));
  } else {
    std::vector<uint16_t> raw(n);
    in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(n * 2));
    for (size_t i = 0; i < n; ++i) {
      const uint32_t bits = static_cast<uint32_t>(raw[i]) << 16;
      std::memcpy(&out[i], &bits, 4);
    }
  }
  REQUIRE(in.good());
  return out;
}

inline LogitStats compare_logits(const float* got, const float* want, int64_t rows, int64_t vocab) {
  LogitStats s;
  s.rows = rows;
  double sum_abs = 0, num = 0, den = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = got + r * vocab;
    const float* w = want + r * vocab;
    double rn = 0, rd = 0;
    int64_t ag = 0, aw = 0;
    for (int64_t v = 0; v < vocab; ++v) {
      const double d = double{g[v]} - w[v];
      s.max_abs = std::max(s.max_abs, std::abs(d));
      sum_abs += std::abs(d);
      rn += d * d;
      rd += double{w[v]} * w[v];
      if (g[v] > g[ag]) ag = v;
      if (w[v] > w[aw]) aw = v;
    }
    num += rn;
    den += rd;
    s.worst_row_rel = std::max(s.worst_row_rel, std::sqrt(rn / rd));
    s.argmax_same += ag == aw;
  }
  s.mean_abs = sum_abs / static_cast<double>(rows * vocab);
  s.rel = std::sqrt(num / den);
  s.ref_rms = std::sqrt(den / static_cast<double>(rows * vocab));
  return s;
}

inline void write_result(const nlohmann::json& result) {
  const char* path = std::getenv("STEM_HF_REFERENCE_RESULT");
  if (path && *path) std::ofstream(path) << result.dump(2) << "\n";
}

// Runs every check of the reference folder `dir` on an engine made with `options` (device,
// cache size; the tokenizer is loaded). Returns the figures it printed.
inline nlohmann::json check_reference(const std::filesystem::path& dir, EngineOptions options) {
  namespace fs = std::filesystem;
  const nlohmann::json ref = read_json(dir / "reference.json");
  const fs::path model = ref.at("model").get<std::string>();
  const double rel_tol = ref.at("tolerance").at("relative").get<double>();
  const double argmax_min = ref.at("tolerance").at("argmax_agreement").get<double>();
  options.load_tokenizer = true;
  Engine engine(model, options);
  const int64_t V = engine.config().vocab_size;
  nlohmann::json result = {{"model", model.string()}, {"device", options.device},
                           {"reference", {{"dtype", ref.value("dtype", "")}, {"device", ref.value("device", "")},
                                          {"transformers", ref.value("transformers_version", "")}}}};
  std::printf("hf_reference: %s on %s against transformers (%s, %s)\n", model.string().c_str(), options.device.c_str(),
              ref.value("dtype", "?").c_str(), ref.value("device", "?").c_str());

  int64_t tok_same = 0, tok_total = 0;
  for (const auto& c : ref.value("tokenizer", nlohmann::json::array())) {
    const std::string text = c.at("text").get<std::string>();
    const auto want = c.at("ids").get<std::vector<int32_t>>();
    const auto got = engine.tokenizer().encode(text, false);
    INFO("tokenizer: " << text);
    CHECK(got == want);
    tok_same += got == want;
    ++tok_total;
  }
  result["tokenizer"] = {{"texts", tok_total}, {"equal", tok_same}};
  std::printf("  tokenizer: %lld of %lld texts give the same ids\n", static_cast<long long>(tok_same),
              static_cast<long long>(tok_total));

  int64_t chat_same = 0, chat_total = 0;
  for (const auto& c : ref.value("chat", nlohmann::json::array())) {
    const std::string text = engine.apply_chat_template(nlohmann::ordered_json(c.at("messages")), true);
    const auto ids = engine.tokenizer().encode(text, false);
    INFO("chat template on " << c.at("messages").dump());
    CHECK(text == c.at("text").get<std::string>());
    CHECK(ids == c.at("ids").get<std::vector<int32_t>>());
    chat_same += text == c.at("text").get<std::string>() && ids == c.at("ids").get<std::vector<int32_t>>();
    ++chat_total;
  }
  result["chat"] = {{"conversations", chat_total}, {"equal", chat_same}};
  std::printf("  chat template: %lld of %lld conversations render and tokenize the same\n",
              static_cast<long long>(chat_same), static_cast<long long>(chat_total));

  double worst_max_abs = 0;
  for (const auto& tf : ref.at("teacher_forced")) {
    const auto ids = tf.at("input_ids").get<std::vector<int32_t>>();
    const int64_t n = static_cast<int64_t>(ids.size());
    const std::vector<float> want = read_logits(dir / tf.at("logits_file").get<std::string>(),
                                                tf.at("logits_dtype").get<std::string>(), n, V);
    Tensor logits = engine.score(ids);
    REQUIRE(logits.shape() == std::vector<int64_t>{n, V});
    const LogitStats s = compare_logits(logits.ptr<float>(), want.data(), n, V);
    worst_max_abs = std::max(worst_max_abs, s.max_abs);
    const double agree = static_cast<double>(s.argmax_same) / static_cast<double>(n);
    std::printf("  logits, %lld tokens (%s): max abs err %.4g, mean abs err %.4g (logit rms %.3g), relative err %.4g "
                "(worst row %.4g), argmax agreement %lld/%lld (%.2f%%)\n",
                static_cast<long long>(n), tf.value("name", "").c_str(), s.max_abs, s.mean_abs, s.ref_rms, s.rel,
                s.worst_row_rel, static_cast<long long>(s.argmax_same), static_cast<long long>(n), 100 * agree);
    result["teacher_forced"].push_back({{"name", tf.value("name", "")}, {"tokens", n}, {"max_abs", s.max_abs},
                                        {"mean_abs", s.mean_abs}, {"logit_rms", s.ref_rms}, {"relative", s.rel},
                                        {"worst_row_relative", s.worst_row_rel}, {"argmax_same", s.argmax_same}});
    INFO("teacher-forced logits over " << n << " tokens");
    CHECK(s.rel <= rel_tol);
    CHECK(agree >= argmax_min);
  }

  const double margin_floor = 2 * worst_max_abs;
  for (const auto& g : ref.value("greedy", nlohmann::json::array())) {
    GenerateRequest req;
    req.prompt = g.at("prompt_ids").get<std::vector<int32_t>>();
    const auto want = g.at("generated_ids").get<std::vector<int32_t>>();
    const auto margins = g.at("top2_margins").get<std::vector<double>>();
    req.sampling.temperature = 0;
    req.stop.max_tokens = static_cast<int32_t>(want.size());
    req.stop.ignore_eos = true;
    const GenerateResult r = engine.generate(req);
    REQUIRE(r.tokens.size() == want.size());
    size_t same = 0;
    while (same < want.size() && r.tokens[same] == want[same]) ++same;
    std::printf("  greedy '%s': %zu of %zu tokens equal%s\n", g.value("name", "").c_str(), same, want.size(),
                same < want.size() ? (", parted at a reference margin of " + std::to_string(margins[same]) +
                                      " (floor " + std::to_string(margin_floor) + ")")
                                         .c_str()
                                   : "");
    // The same tokens must read the same: our detokenizer against transformers' decode (special
    // tokens skipped on both sides).
    const bool text_equal = same == want.size() && r.text == g.value("text", r.text);
    result["greedy"].push_back({{"name", g.value("name", "")}, {"tokens", want.size()}, {"equal_prefix", same},
                                {"text", r.text}, {"text_equal", text_equal}});
    INFO("greedy '" << g.value("name", "") << "' identical for " << same << " of " << want.size() << " steps");
    if (same < want.size()) CHECK(margins[same] <= margin_floor);
    else CHECK(r.text == g.value("text", r.text));
  }
  write_result(result);
  std::fflush(stdout);
  return result;
}

}  // namespace stem::hf_reference
