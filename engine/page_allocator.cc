#include "engine/page_allocator.h"

#include "kernels/check.h"

namespace stem {

PageAllocator::PageAllocator(int64_t num_pages, int32_t page_size) : num_pages_(num_pages), page_size_(page_size) {
  STEM_CHECK(page_size > 0 && 128 % page_size == 0, "page size ", page_size, " must divide 128");
  STEM_CHECK(num_pages > 0, "the KV cache needs at least one page");
  // Hand out low page numbers first: it keeps a lone sequence's pages in order.
  for (int64_t p = num_pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));
}

bool PageAllocator::reserve(std::vector<int32_t>& pages, int64_t tokens) {
  const int64_t need = pages_for(tokens) - static_cast<int64_t>(pages.size());
  if (need <= 0) return true;
  if (need > free_pages()) return false;
  for (int64_t i = 0; i < need; ++i) {
    pages.push_back(free_.back());
    free_.pop_back();
  }
  return true;
}

void PageAllocator::release(std::vector<int32_t>& pages) {
  for (auto it = pages.rbegin(); it != pages.rend(); ++it) free_.push_back(*it);
  pages.clear();
}

int32_t PageAllocator::slot(const std::vector<int32_t>& pages, int64_t pos) const {
  STEM_CHECK(pos >= 0 && pos / page_size_ < static_cast<int64_t>(pages.size()), "position ", pos,
             " has no page");
  return pages[pos / page_size_] * page_size_ + static_cast<int32_t>(pos % page_size_);
}

}  // namespace stem
