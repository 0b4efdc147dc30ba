// The paged KV cache on the host: one pool of pages per layer, a free list, and per-sequence
// page lists. Pages hold `page_size` tokens (a divisor of 128, so Stem's 128-token blocks
// are whole pages).
#pragma once
#include <cstdint>
#include <vector>

#include "engine/model_config.h"
#include "engine/tensor.h"
#include "models/llama.h"

namespace stem {

class KvCache {
 public:
  KvCache(const ModelConfig& config, int64_t num_pages, int32_t page_size);

  int32_t page_size() const { return page_size_; }
  int64_t num_pages() const { return num_pages_; }
  int64_t free_pages() const { return static_cast<int64_t>(free_.size()); }
  int64_t used_pages() const { return num_pages_ - free_pages(); }
  int64_t pages_for(int64_t tokens) const { return (tokens + page_size_ - 1) / page_size_; }

  // Grows a sequence's page list to hold `tokens`; false (and no change) if pages run out.
  bool reserve(std::vector<int32_t>& pages, int64_t tokens);
  void release(std::vector<int32_t>& pages);

  const KvLayers& layers() const { return layers_; }
  // Bytes one page takes over all layers, K and V.
  static int64_t page_bytes(const ModelConfig& config, int32_t page_size);

 private:
  int64_t num_pages_;
  int32_t page_size_;
  std::vector<Tensor> k_, v_;
  KvLayers layers_;
  std::vector<int32_t> free_;
};

}  // namespace stem
