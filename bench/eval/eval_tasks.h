// The model-level measures of the Stem accuracy evaluation: passkey retrieval (a 5-digit key in
// filler text, greedy, chat template) and perplexity of long real text (teacher-forced, every
// position scored from one prefill through the sparse path).
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/eval/eval_model.h"

namespace stem::eval {

struct PasskeyCase {
  int64_t length = 0;  // the nominal length (2048, ..., 8192)
  double depth = 0;    // where the key sits, as a fraction of the filler
  std::string key;     // 5 digits
  std::vector<int32_t> ids;
};

// One case per length and depth (depths (k + 0.5)/n for k < n), each prompt as long as fits in
// min(length, max_tokens − answer room) tokens. Keys come from a fixed seed, so every method
// answers the same prompts.
std::vector<PasskeyCase> make_passkey_cases(const EvalModel& model, const std::vector<int64_t>& lengths, int depths,
                                            int answer_tokens);

// Greedy answers of `m` to every case: one record per case (correct = the first number in the
// answer is the key).
nlohmann::json run_passkey(EvalModel& model, const Method& m, const std::vector<PasskeyCase>& cases,
                           int answer_tokens);

struct Document {
  std::string name;
  std::vector<int32_t> ids;
};

// The files' tokens, each cut to max_tokens; files shorter than min_tokens are refused (an error
// naming the file and its length).
std::vector<Document> load_documents(const EvalModel& model, const std::vector<std::filesystem::path>& files,
                                     int64_t max_tokens, int64_t min_tokens);

// Perplexity of each document under `m`: one prefill of the whole document with every row's
// logits. Records the mean NLL and perplexity over all positions and over those from tail_from on
// (where sparse attention drops the most).
nlohmann::json run_perplexity(EvalModel& model, const Method& m, const std::vector<Document>& docs,
                              int64_t tail_from);

}  // namespace stem::eval
