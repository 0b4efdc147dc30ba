// Small helpers shared by tests: temporary folders, files, and exception-message checks.
#pragma once
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "tests/catch.h"
#include "tests/test_paths.h"

namespace stem::test {

// A fresh folder under the system temp dir, removed when the object goes.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("stemtest-" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline void write_file(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The message of the exception `fn` throws ("" if it throws none).
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

inline std::string source_dir() { return source_dir_path(); }
inline std::string fixtures_dir() { return fixtures_dir_path(); }
inline std::string build_dir() { return build_dir_path(); }

// The default model as models/prepare/ converts it; tests that need it skip where it is absent.
inline std::filesystem::path default_model_dir() {
  if (const char* env = std::getenv("STEM_TEST_MODEL")) return env;
  return std::filesystem::path(source_dir()) / "models/cache/SmolLM2-135M-Instruct";
}

}  // namespace stem::test
