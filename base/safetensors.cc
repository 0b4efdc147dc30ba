#include "base/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

namespace stem {

namespace {
// A header larger than this is not a header: refuse it before allocating.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

[[noreturn]] void fail(const std::filesystem::path& p, const std::string& why) {
  throw Error(p.string() + ": " + why);
}
}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorInfo::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

DType parse_safetensors_dtype(const std::string& s, const std::string& where) {
  if (s == "F32") return DType::F32;
  if (s == "F16") return DType::F16;
  if (s == "BF16") return DType::BF16;
  if (s == "I32") return DType::I32;
  if (s == "I64") return DType::I64;
  if (s == "F8_E4M3") return DType::F8E4M3;
  throw Error(where + " has dtype '" + s + "', which stemserve does not load (F32, F16, BF16, F8_E4M3, I32, I64)");
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path, "not a regular file");
  }
  map_size_ = static_cast<size_t>(st.st_size);
  if (map_size_ < 8) {
    ::close(fd);
    fail(path, "file is " + std::to_string(map_size_) + " bytes, too short for a safetensors header");
  }
  map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail(path, std::string("mmap failed: ") + std::strerror(errno));
  }
  try {
    uint64_t header_len = 0;
    std::memcpy(&header_len, map_, 8);  // little-endian, as the format says; x86/ARM hosts are LE
    if (header_len > map_size_ - 8)
      fail(path, "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                     std::to_string(map_size_) + " bytes): truncated or not a safetensors file");
    if (header_len > kMaxHeaderBytes) fail(path, "header length " + std::to_string(header_len) + " is implausibly large");
    parse_header(static_cast<const char*>(map_) + 8, header_len, map_size_ - 8 - header_len);
  } catch (...) {
    ::munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, map_size_);
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

void SafetensorsFile::parse_header(const char* header, size_t header_len, size_t data_size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(header, header + header_len);
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number like 1E400
    fail(path_, std::string("header is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) fail(path_, "header is not a JSON object");
  const char* data = header + header_len;
  std::vector<std::pair<uint64_t, uint64_t>> spans;
  for (auto& [name, entry] : j.items()) {
    if (name == "__metadata__") {
      if (entry.is_object())
        for (auto& [k, v] : entry.items())
          if (v.is_string()) metadata_[k] = v.get<std::string>();
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
      fail(path_, where + " needs dtype, shape and data_offsets");
    if (!entry["dtype"].is_string()) fail(path_, where + ": dtype is not a string");
    TensorInfo t;
    t.name = name;
    try {
      t.dtype = parse_safetensors_dtype(entry["dtype"].get<std::string>(), where);
    } catch (const Error& e) {
      fail(path_, e.what());
    }
    const auto& shape = entry["shape"];
    if (!shape.is_array() || shape.size() > 8) fail(path_, where + ": shape is not an array of at most 8 dims");
    uint64_t numel = 1;
    for (const auto& d : shape) {
      if (!d.is_number_unsigned()) fail(path_, where + ": shape has a negative or non-integer dim");
      uint64_t v = d.get<uint64_t>();
      if (v > (1ull << 40) || (v && numel > (1ull << 50) / v)) fail(path_, where + ": shape is implausibly large");
      numel *= v;
      t.shape.push_back(static_cast<int64_t>(v));
    }
    const auto& off = entry["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(path_, where + ": data_offsets must be two non-negative integers");
    uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end) fail(path_, where + ": data_offsets [" + std::to_string(begin) + "," + std::to_string(end) + "] are reversed");
    if (end > data_size)
      fail(path_, where + ": data_offsets end " + std::to_string(end) + " is past the data section (" +
                      std::to_string(data_size) + " bytes): file truncated?");
    uint64_t want = numel * dtype_size(t.dtype);
    if (end - begin != want)
      fail(path_, where + " has shape " + t.shape_str() + " (" + std::to_string(want) + " bytes) but data_offsets span " +
                      std::to_string(end - begin) + " bytes");
    t.data = data + begin;
    t.nbytes = want;
    if (end > begin) spans.emplace_back(begin, end);
    tensors_.emplace(name, std::move(t));
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    if (spans[i].first < spans[i - 1].second) {
      std::string a, b;
      for (const auto& [n, t] : tensors_) {
        uint64_t o = static_cast<uint64_t>(static_cast<const char*>(t.data) - data);
        if (o == spans[i - 1].first) a = n;
        if (o == spans[i].first) b = n;
      }
      fail(path_, "tensors '" + a + "' and '" + b + "' overlap in the data section");
    }
}

}  // namespace stem
