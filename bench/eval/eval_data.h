// The long-context evaluation's prompts as bench/eval/make_tasks.py writes them: DIR/index.json
// (one record per prompt) and DIR/tokens.bin (uint32 little-endian token ids, back to back).
#pragma once
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

namespace stem::eval {

struct Prompt {
  std::string task;  // niah_single, ..., cwe, code, doc
  int64_t length = 0, index = 0;
  std::span<const int32_t> ids;
  int max_new = 0;
  std::vector<std::string> answers;
  std::string stop;  // "line" (code) or empty
  std::string name;  // documents
  const nlohmann::json* record = nullptr;
};

class TaskData {
 public:
  explicit TaskData(const std::filesystem::path& dir);
  TaskData(const TaskData&) = delete;  // the prompts point into its own token buffer and index
  TaskData& operator=(const TaskData&) = delete;
  const nlohmann::json& index() const { return index_; }
  const std::vector<Prompt>& prompts() const { return prompts_; }
  // The prompts of one task and length, by index, [from, from + limit) (limit < 0: all).
  std::vector<const Prompt*> select(const std::string& task, int64_t length, int64_t from, int64_t limit) const;
  std::vector<const Prompt*> documents() const;
  std::vector<std::string> tasks() const;  // in the order the file has them, "doc" left out
  std::vector<int64_t> lengths() const;
  int64_t longest() const;  // the longest prompt or document, in tokens

 private:
  nlohmann::json index_;
  std::vector<int32_t> tokens_;
  std::vector<Prompt> prompts_;
};

}  // namespace stem::eval
