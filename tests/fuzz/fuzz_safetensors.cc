// The safetensors header parser and its offset checks, on arbitrary file contents: the input is
// written to an in-memory file (memfd) and opened as a model file would be. Every tensor it
// accepts must lie inside the data section: its bytes are read.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>

#include "base/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = memfd_create("fuzz.safetensors", 0);
  if (fd < 0) return 0;
  size_t written = 0;
  while (written < size) {
    const ssize_t n = write(fd, data + written, size - written);
    if (n <= 0) break;
    written += static_cast<size_t>(n);
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  stem::fuzz::expect_ok_or_error([&] {
    stem::SafetensorsFile file(path);
    volatile uint8_t sink = 0;
    for (const auto& [name, t] : file.tensors()) {
      FUZZ_CHECK(t.name == name);
      FUZZ_CHECK(t.numel() >= 0);
      if (t.nbytes == 0) continue;
      FUZZ_CHECK(t.data != nullptr);
      const auto* bytes = static_cast<const uint8_t*>(t.data);
      sink = sink + bytes[0] + bytes[t.nbytes - 1];  // inside the mapping, or this faults
    }
    (void)sink;
    (void)file.metadata().size();
  });
  close(fd);
  return 0;
}
