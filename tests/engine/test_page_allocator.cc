#include "engine/page_allocator.h"
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
