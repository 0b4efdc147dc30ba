#include "base/weights.h"

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

namespace stem {

namespace fs = std::filesystem;

WeightStore::WeightStore(const fs::path& model_dir) {
  const fs::path single = model_dir / "model.safetensors";
  const fs::path index = model_dir / "model.safetensors.index.json";
  std::vector<fs::path> shard_paths;
  std::map<std::string, std::string> weight_map;
  if (fs::exists(index)) {
    std::ifstream in(index);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number like 1E400
      throw Error(index.string() + ": not valid JSON: " + e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object())
      throw Error(index.string() + ": has no \"weight_map\" object");
    std::set<std::string> shards;
    for (auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) throw Error(index.string() + ": weight_map entry '" + name + "' is not a file name");
      std::string f = file.get<std::string>();
      // Shards must sit in the model folder: never follow a path out of it.
      if (f.find('/') != std::string::npos || f.find('\\') != std::string::npos || f == ".." || f.empty())
        throw Error(index.string() + ": shard name '" + f + "' is not a plain file name");
      shards.insert(f);
      weight_map[name] = f;
    }
    shard_paths.assign(shards.begin(), shards.end());
    for (auto& p : shard_paths) p = model_dir / p;
  } else if (fs::exists(single)) {
    shard_paths.push_back(single);
  } else {
    throw Error(model_dir.string() + ": no model.safetensors or model.safetensors.index.json");
  }
  for (const auto& p : shard_paths) {
    if (!fs::exists(p)) throw Error(p.string() + ": shard named in model.safetensors.index.json is missing");
    files_.push_back(std::make_unique<SafetensorsFile>(p));
    for (const auto& [name, info] : files_.back()->tensors()) {
      auto [it, inserted] = index_.emplace(name, files_.size() - 1);
      if (!inserted)
        throw Error(p.string() + ": tensor '" + name + "' is also in " + files_[it->second]->path().string());
    }
  }
  for (const auto& [name, file] : weight_map) {
    auto it = index_.find(name);
    if (it == index_.end() || files_[it->second]->path().filename() != file)
      throw Error(index.string() + ": tensor '" + name + "' is mapped to " + file + ", which does not hold it");
  }
}

bool WeightStore::has(const std::string& name) const { return index_.count(name) != 0; }

const TensorInfo* WeightStore::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : files_[it->second]->find(name);
}

fs::path WeightStore::file_of(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? fs::path() : files_[it->second]->path();
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  for (const auto& [n, i] : index_) out.push_back(n);
  return out;
}

const TensorInfo& WeightStore::get(const std::string& name, const std::vector<int64_t>& shape) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    std::string where = files_.size() == 1 ? files_[0]->path().string() : "the model's safetensors shards";
    throw Error(where + ": tensor '" + name + "' is missing");
  }
  const TensorInfo& t = *files_[it->second]->find(name);
  if (t.shape != shape) {
    TensorInfo want;
    want.shape = shape;
    throw Error(files_[it->second]->path().string() + ": tensor '" + name + "' has shape " + t.shape_str() +
                ", config says " + want.shape_str());
  }
  if (t.dtype != DType::F32 && t.dtype != DType::BF16 && t.dtype != DType::F16 && t.dtype != DType::F8E4M3)
    throw Error(files_[it->second]->path().string() + ": tensor '" + name + "' has dtype " + dtype_name(t.dtype) +
                ", weights must be f32, f16, bf16 or f8e4m3");
  return t;
}

void convert_to_f32(const TensorInfo& t, float* out) {
  const int64_t n = t.numel();
  switch (t.dtype) {
    case DType::F32: std::memcpy(out, t.data, n * 4); break;
    // A safetensors file packs its tensors back to back, so a 16-bit tensor after an odd-sized
    // one (FP8 codes) starts at an odd address: read it bytewise, never through a uint16_t*.
    case DType::BF16:
    case DType::F16: {
      const auto* p = static_cast<const unsigned char*>(t.data);
      const bool bf16 = t.dtype == DType::BF16;
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, p + 2 * i, 2);
        out[i] = bf16 ? bf16_to_f32(v) : f16_to_f32(v);
      }
      break;
    }
    default: throw Error("tensor '" + t.name + "': cannot convert " + dtype_name(t.dtype) + " to f32");
  }
}

Tensor WeightStore::load_f32(const std::string& name, const std::vector<int64_t>& shape) const {
  const TensorInfo& t = get(name, shape);
  Tensor out(DType::F32, shape);
  convert_to_f32(t, out.ptr<float>());
  return out;
}

}  // namespace stem
