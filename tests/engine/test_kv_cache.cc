#include "engine/kv_cache.h"
#include "tests/test_util.h"

using namespace stem;

TEST_CASE("KV pages are reserved, refused when they run out, and returned") {
  ModelConfig c;
  c.num_hidden_layers = 2;
  c.num_key_value_heads = 2;
  c.head_dim = 8;
  KvCache kv(c, 4, 16);
  CHECK(kv.layers().k.size() == 2);
  CHECK(kv.layers().k[0].str() == "f32[4,16,2,8]");
  std::vector<int32_t> a, b;
  CHECK(kv.reserve(a, 17));
  CHECK(a.size() == 2);
  CHECK(kv.reserve(a, 32));
  CHECK(a.size() == 2);
  CHECK_FALSE(kv.reserve(b, 48));
  CHECK(b.empty());
  CHECK(kv.free_pages() == 2);
  kv.release(a);
  CHECK(kv.free_pages() == 4);
  CHECK(kv.reserve(b, 64));
  CHECK(kv.used_pages() == 4);
  CHECK_THROWS(KvCache(c, 4, 24));
}
