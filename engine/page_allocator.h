// Bookkeeping of the paged KV cache: which pages are free, which sequences hold which pages, and
// the prefix cache (docs/prefix_caching.md). Pages hold `page_size` tokens (a divisor of 128, so
// Stem's 128-token blocks are whole pages); the memory itself lives in the backend.
//
// With prefix caching, a full page whose K/V a sequence computed may be published under its
// PageHash; later sequences with the same hash chain take it read-only instead of computing it
// again. Each page counts the sequences holding it. A cached page nobody holds stays cached
// (evictable) until reserve() needs it: free pages go first, then evictable ones, least recently
// released first. A page's contents never change while it is cached: its tokens are all computed,
// and sequences write only past their computed tokens.
#pragma once
#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "engine/page_hash.h"

namespace stem {

class PageAllocator {
 public:
  PageAllocator(int64_t num_pages, int32_t page_size, bool prefix_caching = false);

  int32_t page_size() const { return page_size_; }
  int64_t num_pages() const { return num_pages_; }
  bool prefix_caching() const { return prefix_caching_; }
  // Pages reserve() can hand out: unused ones and evictable cached ones.
  int64_t free_pages() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  // Pages some sequence holds.
  int64_t used_pages() const { return num_pages_ - free_pages(); }
  // Pages in the prefix cache (held or evictable), and of those the evictable ones.
  int64_t cached_pages() const { return static_cast<int64_t>(index_.size()); }
  int64_t evictable_pages() const { return static_cast<int64_t>(lru_.size()); }
  int64_t pages_for(int64_t tokens) const { return (tokens + page_size_ - 1) / page_size_; }

  // Grows a sequence's page list to hold `tokens`; false (and no change) if pages run out.
  bool reserve(std::vector<int32_t>& pages, int64_t tokens);
  // Lets go of all of a sequence's pages.
  void release(std::vector<int32_t>& pages);
  // The KV slot of token position `pos` in a sequence with these pages.
  int32_t slot(const std::vector<int32_t>& pages, int64_t pos) const;

  // The cached pages of the longest leading run of `hashes` (at most max_pages), page k's tokens
  // checked against tokens[k·page_size, (k+1)·page_size), cut back to a multiple of `align` pages
  // (a causal Stem prefill restarts on a block boundary): appended to the empty `pages`, held by
  // the caller. Returns how many.
  int64_t take_cached(std::span<const PageHash> hashes, std::span<const int32_t> tokens, int64_t max_pages,
                      std::vector<int32_t>& pages, int64_t align = 1);
  // Publishes a held page whose K/V are those of the full page `tokens` under `hash`. Does nothing
  // when the cache already has that hash (another sequence computed the same page) or the page is
  // cached already, or with prefix caching off.
  void publish(int32_t page, const PageHash& hash, std::span<const int32_t> tokens);
  // How many sequences hold `page` (tests and checks).
  int32_t holders(int32_t page) const { return refs_.at(static_cast<size_t>(page)); }

 private:
  void uncache(int32_t page);

  int64_t num_pages_;
  int32_t page_size_;
  bool prefix_caching_;
  std::vector<int32_t> free_;  // unheld and uncached; the back goes first
  std::vector<int32_t> refs_;  // per page: the sequences holding it
  // The prefix cache: hash.lo -> page, and per page its hash, whether it is cached, its tokens
  // and its place in the eviction order (unheld cached pages; the front goes first).
  std::unordered_map<uint64_t, int32_t> index_;
  std::vector<PageHash> hash_;
  std::vector<uint8_t> cached_;
  std::vector<int32_t> tokens_;  // [num_pages * page_size] when caching
  std::list<int32_t> lru_;
  std::vector<std::list<int32_t>::iterator> lru_pos_;
};

}  // namespace stem
