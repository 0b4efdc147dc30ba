// A safetensors file, memory-mapped. Every offset and size in its header is checked at open,
// so a truncated or corrupt file fails here, naming the file, the tensor and the reason.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "kernels/view.h"

namespace stem {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // inside the mapping
  size_t nbytes = 0;
  int64_t numel() const;
  std::string shape_str() const;  // "[576,576]"
};

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  void parse_header(const char* header, size_t header_len, size_t data_size);

  std::filesystem::path path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Parses a safetensors dtype name ("BF16", "F32", ...); throws for the ones we do not load.
DType parse_safetensors_dtype(const std::string& s, const std::string& where);

}  // namespace stem
