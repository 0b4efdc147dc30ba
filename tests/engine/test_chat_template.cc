#include "engine/chat_template.h"

#include "tests/catch.h"

using stem::ChatTemplate;

TEST_CASE("chat template renders text") {
  ChatTemplate t("hello {{ name }}");
  REQUIRE(t.render({{"name", "world"}}) == "hello world");
}
