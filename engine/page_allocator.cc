#include "engine/page_allocator.h"

#include <algorithm>

#include "kernels/check.h"

namespace stem {

PageAllocator::PageAllocator(int64_t num_pages, int32_t page_size, bool prefix_caching)
    : num_pages_(num_pages), page_size_(page_size), prefix_caching_(prefix_caching) {
  STEM_CHECK(page_size > 0 && 128 % page_size == 0, "page size ", page_size, " must divide 128");
  STEM_CHECK(num_pages > 0, "the KV cache needs at least one page");
  // Hand out low page numbers first: it keeps a lone sequence's pages in order.
  for (int64_t p = num_pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));
  refs_.assign(static_cast<size_t>(num_pages), 0);
  if (prefix_caching) {
    hash_.resize(static_cast<size_t>(num_pages));
    cached_.assign(static_cast<size_t>(num_pages), 0);
    tokens_.resize(static_cast<size_t>(num_pages) * static_cast<size_t>(page_size));
    lru_pos_.resize(static_cast<size_t>(num_pages), lru_.end());
  }
}

bool PageAllocator::reserve(std::vector<int32_t>& pages, int64_t tokens) {
  const int64_t need = pages_for(tokens) - static_cast<int64_t>(pages.size());
  if (need <= 0) return true;
  if (need > free_pages()) return false;
  for (int64_t i = 0; i < need; ++i) {
    int32_t p;
    if (!free_.empty()) {
      p = free_.back();
      free_.pop_back();
    } else {  // evict the least recently released cached page
      p = lru_.front();
      lru_.pop_front();
      lru_pos_[static_cast<size_t>(p)] = lru_.end();
      uncache(p);
    }
    refs_[static_cast<size_t>(p)] = 1;
    pages.push_back(p);
  }
  return true;
}

void PageAllocator::release(std::vector<int32_t>& pages) {
  // Last page first: of a released sequence's cached pages, its tail is evicted before its head
  // (a head is the more likely to be shared).
  for (auto it = pages.rbegin(); it != pages.rend(); ++it) {
    const auto p = static_cast<size_t>(*it);
    STEM_CHECK(refs_[p] > 0, "page ", *it, " released by a sequence that does not hold it");
    if (--refs_[p] > 0) continue;
    if (prefix_caching_ && cached_[p])
      lru_pos_[p] = lru_.insert(lru_.end(), *it);
    else
      free_.push_back(*it);
  }
  pages.clear();
}

int32_t PageAllocator::slot(const std::vector<int32_t>& pages, int64_t pos) const {
  STEM_CHECK(pos >= 0 && pos / page_size_ < static_cast<int64_t>(pages.size()), "position ", pos,
             " has no page");
  return pages[pos / page_size_] * page_size_ + static_cast<int32_t>(pos % page_size_);
}

int64_t PageAllocator::take_cached(std::span<const PageHash> hashes, std::span<const int32_t> tokens,
                                   int64_t max_pages, std::vector<int32_t>& pages, int64_t align) {
  STEM_CHECK(pages.empty(), "cached pages start a sequence's page list");
  STEM_CHECK(align >= 1, "take_cached: align must be >= 1, got ", align);
  if (!prefix_caching_) return 0;
  const int64_t n = std::min<int64_t>({max_pages, static_cast<int64_t>(hashes.size()),
                                       static_cast<int64_t>(tokens.size()) / page_size_});
  // The run first, then hold the aligned part of it.
  for (int64_t k = 0; k < n; ++k) {
    auto it = index_.find(hashes[static_cast<size_t>(k)].lo);
    if (it == index_.end()) break;
    const auto pi = static_cast<size_t>(it->second);
    const auto want = tokens.subspan(static_cast<size_t>(k * page_size_), static_cast<size_t>(page_size_));
    if (!(hash_[pi] == hashes[static_cast<size_t>(k)]) ||
        !std::equal(want.begin(), want.end(), tokens_.begin() + static_cast<ptrdiff_t>(pi * page_size_)))
      break;
    pages.push_back(it->second);
  }
  pages.resize(pages.size() / static_cast<size_t>(align) * static_cast<size_t>(align));
  for (int32_t p : pages) {
    const auto pi = static_cast<size_t>(p);
    if (refs_[pi]++ == 0) {  // it was evictable
      lru_.erase(lru_pos_[pi]);
      lru_pos_[pi] = lru_.end();
    }
  }
  return static_cast<int64_t>(pages.size());
}

void PageAllocator::publish(int32_t page, const PageHash& hash, std::span<const int32_t> tokens) {
  if (!prefix_caching_) return;
  const auto p = static_cast<size_t>(page);
  STEM_CHECK(refs_.at(p) > 0, "page ", page, " is published by no holder");
  STEM_CHECK(static_cast<int64_t>(tokens.size()) == page_size_, "only full pages are cached");
  if (cached_[p] || index_.count(hash.lo)) return;
  index_[hash.lo] = page;
  hash_[p] = hash;
  cached_[p] = 1;
  std::copy(tokens.begin(), tokens.end(), tokens_.begin() + static_cast<ptrdiff_t>(p * page_size_));
}

void PageAllocator::uncache(int32_t page) {
  const auto p = static_cast<size_t>(page);
  index_.erase(hash_[p].lo);
  cached_[p] = 0;
}

}  // namespace stem
