#include "engine/page_allocator.h"

#include <span>

#include "tests/test_util.h"

using namespace stem;

TEST_CASE("KV pages are reserved, refused when they run out, and returned") {
  PageAllocator kv(4, 16);
  std::vector<int32_t> a, b;
  CHECK(kv.reserve(a, 17));
  CHECK(a == std::vector<int32_t>{0, 1});
  CHECK(kv.slot(a, 17) == 17);
  CHECK(kv.reserve(a, 32));
  CHECK(a.size() == 2);
  CHECK_FALSE(kv.reserve(b, 48));
  CHECK(b.empty());
  CHECK(kv.free_pages() == 2);
  kv.release(a);
  CHECK(kv.free_pages() == 4);
  CHECK(kv.reserve(b, 64));
  CHECK(kv.used_pages() == 4);
  CHECK_THROWS(kv.slot(b, 64));
  CHECK_THROWS(PageAllocator(4, 24));
}

namespace {

// Hashes of the full pages of `tokens` under `seed`.
std::vector<PageHash> page_hashes(const PageHash& seed, const std::vector<int32_t>& tokens, int32_t page_size) {
  std::vector<PageHash> h;
  for (size_t k = 0; (k + 1) * page_size <= tokens.size(); ++k)
    h.push_back(chain_page_hash(h.empty() ? seed : h.back(),
                                std::span(tokens).subspan(k * page_size, static_cast<size_t>(page_size))));
  return h;
}

std::vector<int32_t> iota_tokens(int32_t n, int32_t from = 0) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) t[static_cast<size_t>(i)] = from + i;
  return t;
}

// Publishes every full page of `pages` as the pages of `tokens`.
void publish_all(PageAllocator& kv, const std::vector<int32_t>& pages, const std::vector<PageHash>& h,
                 const std::vector<int32_t>& tokens) {
  for (size_t k = 0; k < h.size() && k < pages.size(); ++k)
    kv.publish(pages[k], h[k], std::span(tokens).subspan(k * kv.page_size(), static_cast<size_t>(kv.page_size())));
}

}  // namespace

TEST_CASE("page hashes: chained over the tokens, the seed's fields and their boundaries") {
  const PageHash seed = prefix_seed("model", "dense", "");
  const std::vector<int32_t> a = iota_tokens(8), b = iota_tokens(8, 1);
  CHECK(chain_page_hash(seed, a) == chain_page_hash(seed, a));
  CHECK_FALSE(chain_page_hash(seed, a) == chain_page_hash(seed, b));
  CHECK_FALSE(chain_page_hash(seed, a) == chain_page_hash(prefix_seed("model", "dense", "tenant"), a));
  CHECK_FALSE(prefix_seed("ab", "c", "") == prefix_seed("a", "bc", ""));
  CHECK_FALSE(prefix_seed("model", "dense", "") == prefix_seed("model", "stem", ""));
  // The same page after another parent is another page.
  const PageHash p1 = chain_page_hash(seed, a), p2 = chain_page_hash(seed, b);
  CHECK_FALSE(chain_page_hash(p1, b) == chain_page_hash(p2, b));
}

TEST_CASE("prefix cache: published pages are shared, counted and evicted least recently used first") {
  PageAllocator kv(8, 4, true);
  const PageHash seed = prefix_seed("m", "dense", "");
  const std::vector<int32_t> t = iota_tokens(12);
  const std::vector<PageHash> h = page_hashes(seed, t, 4);
  std::vector<int32_t> a;
  REQUIRE(kv.reserve(a, 12));
  publish_all(kv, a, h, t);
  CHECK(kv.cached_pages() == 3);
  CHECK(kv.evictable_pages() == 0);

  // A second sequence takes the cached run while the first still holds it: two holders each.
  std::vector<int32_t> b;
  CHECK(kv.take_cached(h, t, 2, b) == 2);  // at most max_pages
  CHECK(b == std::vector<int32_t>{a[0], a[1]});
  CHECK(kv.holders(a[0]) == 2);
  CHECK(kv.holders(a[2]) == 1);
  CHECK(kv.used_pages() == 3);
  kv.release(a);
  CHECK(kv.holders(b[0]) == 1);
  CHECK(kv.evictable_pages() == 1);  // a's third page: cached, held by nobody
  kv.release(b);
  CHECK(kv.used_pages() == 0);
  CHECK(kv.evictable_pages() == 3);
  CHECK(kv.free_pages() == 8);

  // Other tokens under a matching hash (a collision, or a corrupted chain) are no hit.
  std::vector<int32_t> other = t, c;
  other[5] = 99;
  CHECK(kv.take_cached(h, other, 3, c) == 1);
  kv.release(c);
  // A run cut back to a multiple of `align` pages (a causal Stem block): the rest is not held.
  CHECK(kv.take_cached(h, t, 3, c, 2) == 2);
  CHECK(kv.evictable_pages() == 1);
  kv.release(c);
  CHECK(kv.take_cached(h, other, 3, c, 2) == 0);
  CHECK(kv.evictable_pages() == 3);

  // Pressure: the 5 free pages go first, then the cached ones, the least recently released first:
  // the chain's last page (released first, last page first), so its head stays a hit.
  std::vector<int32_t> d;
  REQUIRE(kv.reserve(d, 4 * 6));
  CHECK(kv.cached_pages() == 2);
  CHECK(kv.take_cached(h, t, 3, c) == 2);
  // Held cached pages are never evicted: 8 pages, all held now.
  std::vector<int32_t> e;
  CHECK(kv.free_pages() == 0);
  CHECK_FALSE(kv.reserve(e, 1));
  kv.release(c);
  kv.release(d);
  CHECK(kv.used_pages() == 0);
  CHECK(kv.evictable_pages() == 2);
  CHECK_THROWS(kv.release(d = {0}));  // a page nobody holds
}

TEST_CASE("prefix cache: off, nothing is published or taken; a hash already cached is not published twice") {
  const PageHash seed = prefix_seed("m", "dense", "");
  const std::vector<int32_t> t = iota_tokens(8);
  const std::vector<PageHash> h = page_hashes(seed, t, 4);
  PageAllocator off(4, 4);
  std::vector<int32_t> a, b;
  REQUIRE(off.reserve(a, 8));
  publish_all(off, a, h, t);
  CHECK(off.cached_pages() == 0);
  CHECK(off.take_cached(h, t, 2, b) == 0);
  off.release(a);
  CHECK(off.evictable_pages() == 0);

  PageAllocator kv(4, 4, true);
  REQUIRE(kv.reserve(a, 8));
  REQUIRE(kv.reserve(b, 8));  // the same tokens computed by two sequences at once
  publish_all(kv, a, h, t);
  publish_all(kv, b, h, t);
  CHECK(kv.cached_pages() == 2);
  kv.release(b);
  CHECK(kv.evictable_pages() == 0);  // b's copies were never cached: free again
  CHECK(kv.free_pages() == 2);
  kv.release(a);
  CHECK(kv.evictable_pages() == 2);
}
