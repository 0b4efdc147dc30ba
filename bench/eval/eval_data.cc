#include "bench/eval/eval_data.h"

#include <algorithm>
#include <fstream>

#include "kernels/check.h"

namespace stem::eval {

TaskData::TaskData(const std::filesystem::path& dir) {
  const std::filesystem::path index_path = dir / "index.json", tokens_path = dir / "tokens.bin";
  std::ifstream in(index_path);
  STEM_CHECK(in.good(), index_path.string(), ": cannot read it (bench/eval/make_tasks.py writes it)");
  index_ = nlohmann::json::parse(in);
  std::ifstream bin(tokens_path, std::ios::binary | std::ios::ate);
  STEM_CHECK(bin.good(), tokens_path.string(), ": cannot read it");
  const auto bytes = static_cast<size_t>(bin.tellg());
  STEM_CHECK(bytes % 4 == 0, tokens_path.string(), ": ", bytes, " bytes is not a whole number of uint32 ids");
  tokens_.resize(bytes / 4);
  bin.seekg(0);
  bin.read(reinterpret_cast<char*>(tokens_.data()), static_cast<std::streamsize>(bytes));  // little-endian hosts
  STEM_CHECK(bin.good(), tokens_path.string(), ": short read");
  const int64_t vocab = index_.value("vocab_size", int64_t{0});
  for (const nlohmann::json& r : index_.at("prompts")) {
    Prompt p;
    p.task = r.at("task").get<std::string>();
    p.length = r.at("length").get<int64_t>();
    p.index = r.at("index").get<int64_t>();
    const auto offset = r.at("offset").get<size_t>(), count = r.at("tokens").get<size_t>();
    STEM_CHECK(offset + count <= tokens_.size(), index_path.string(), ": prompt ", p.task, "/", p.length, "/", p.index,
               " reaches past tokens.bin");
    p.ids = std::span<const int32_t>(tokens_.data() + offset, count);
    p.max_new = r.value("max_new", 0);
    if (r.contains("answers")) p.answers = r["answers"].get<std::vector<std::string>>();
    p.stop = r.value("stop", "");
    p.name = r.value("name", "");
    p.record = &r;
    prompts_.push_back(std::move(p));
  }
  for (int32_t t : tokens_)
    STEM_CHECK(t >= 0 && (vocab == 0 || t < vocab), tokens_path.string(), ": token id ", t, " outside the vocabulary");
}

std::vector<const Prompt*> TaskData::select(const std::string& task, int64_t length, int64_t from,
                                            int64_t limit) const {
  std::vector<const Prompt*> out;
  for (const Prompt& p : prompts_)
    if (p.task == task && p.length == length && p.index >= from && (limit < 0 || p.index < from + limit))
      out.push_back(&p);
  std::sort(out.begin(), out.end(), [](const Prompt* a, const Prompt* b) { return a->index < b->index; });
  return out;
}

std::vector<const Prompt*> TaskData::documents() const {
  std::vector<const Prompt*> out;
  for (const Prompt& p : prompts_)
    if (p.task == "doc") out.push_back(&p);
  return out;
}

std::vector<std::string> TaskData::tasks() const {
  std::vector<std::string> out;
  for (const Prompt& p : prompts_)
    if (p.task != "doc" && std::find(out.begin(), out.end(), p.task) == out.end()) out.push_back(p.task);
  return out;
}

std::vector<int64_t> TaskData::lengths() const {
  std::vector<int64_t> out;
  for (const Prompt& p : prompts_)
    if (p.task != "doc" && std::find(out.begin(), out.end(), p.length) == out.end()) out.push_back(p.length);
  return out;
}

int64_t TaskData::longest() const {
  int64_t n = 0;
  for (const Prompt& p : prompts_) n = std::max(n, std::max(p.length, static_cast<int64_t>(p.ids.size())));
  return n;
}

}  // namespace stem::eval
