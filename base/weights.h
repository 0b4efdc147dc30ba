// The weights of a model folder: model.safetensors, or the shards that
// model.safetensors.index.json names. Tensors are looked up by their Hugging Face name.
#pragma once
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/safetensors.h"
#include "base/tensor.h"

namespace stem {

class WeightStore {
 public:
  explicit WeightStore(const std::filesystem::path& model_dir);

  bool has(const std::string& name) const;
  // The tensor, unchecked; null when the checkpoint has none of that name.
  const TensorInfo* find(const std::string& name) const;
  // The tensor, after checking its shape and that it is a float (f32, f16, bf16, or E4M3, whose
  // scale the caller reads); the error names the file, the tensor and both shapes.
  const TensorInfo& get(const std::string& name, const std::vector<int64_t>& shape) const;
  // The tensor converted to f32 in host memory (the CPU backend computes in f32).
  Tensor load_f32(const std::string& name, const std::vector<int64_t>& shape) const;
  std::vector<std::string> names() const;
  // Which file holds a tensor (for messages).
  std::filesystem::path file_of(const std::string& name) const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> index_;  // tensor name -> files_ index
};

// Converts any loadable float dtype to f32.
void convert_to_f32(const TensorInfo& t, float* out);

}  // namespace stem
