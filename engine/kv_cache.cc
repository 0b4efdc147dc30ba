#include "engine/kv_cache.h"

namespace stem {

KvCache::KvCache(const ModelConfig& c, int64_t num_pages, int32_t page_size)
    : num_pages_(num_pages), page_size_(page_size) {
  STEM_CHECK(page_size > 0 && 128 % page_size == 0, "page size ", page_size, " must divide 128");
  STEM_CHECK(num_pages > 0, "the KV cache needs at least one page");
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    k_.emplace_back(DType::F32, std::vector<int64_t>{num_pages, page_size, c.num_key_value_heads, c.head_dim});
    v_.emplace_back(DType::F32, std::vector<int64_t>{num_pages, page_size, c.num_key_value_heads, c.head_dim});
    layers_.k.push_back(k_.back().view());
    layers_.v.push_back(v_.back().view());
  }
  // Hand out low page numbers first: it keeps a lone sequence's pages in order.
  for (int64_t p = num_pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));
}

int64_t KvCache::page_bytes(const ModelConfig& c, int32_t page_size) {
  return 2 * c.num_hidden_layers * page_size * c.num_key_value_heads * c.head_dim * static_cast<int64_t>(sizeof(float));
}

bool KvCache::reserve(std::vector<int32_t>& pages, int64_t tokens) {
  const int64_t need = pages_for(tokens) - static_cast<int64_t>(pages.size());
  if (need <= 0) return true;
  if (need > free_pages()) return false;
  for (int64_t i = 0; i < need; ++i) {
    pages.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void KvCache::release(std::vector<int32_t>& pages) {
  for (auto it = pages.rbegin(); it != pages.rend(); ++it) free_.push_back(*it);
  pages.clear();
}

}  // namespace stem
