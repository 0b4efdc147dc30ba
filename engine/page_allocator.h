// Bookkeeping of the paged KV cache: which pages are free and which belong to a sequence.
// Pages hold `page_size` tokens (a divisor of 128, so Stem's 128-token blocks are whole pages);
// the memory itself lives in the backend.
#pragma once
#include <cstdint>
#include <vector>

namespace stem {

class PageAllocator {
 public:
  PageAllocator(int64_t num_pages, int32_t page_size);

  int32_t page_size() const { return page_size_; }
  int64_t num_pages() const { return num_pages_; }
  int64_t free_pages() const { return static_cast<int64_t>(free_.size()); }
  int64_t used_pages() const { return num_pages_ - free_pages(); }
  int64_t pages_for(int64_t tokens) const { return (tokens + page_size_ - 1) / page_size_; }

  // Grows a sequence's page list to hold `tokens`; false (and no change) if pages run out.
  bool reserve(std::vector<int32_t>& pages, int64_t tokens);
  // Returns all of a sequence's pages.
  void release(std::vector<int32_t>& pages);
  // The KV slot of token position `pos` in a sequence with these pages.
  int32_t slot(const std::vector<int32_t>& pages, int64_t pos) const;

 private:
  int64_t num_pages_;
  int32_t page_size_;
  std::vector<int32_t> free_;
};

}  // namespace stem
