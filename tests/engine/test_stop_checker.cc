#include "engine/stop_checker.h"
#include "tests/test_util.h"

using stem::StopChecker;

TEST_CASE("stop strings cut the output and are never streamed in part") {
  StopChecker s({"</end>", "\n\n"});
  std::string out;
  for (std::string piece : {"Hello", " wor", "ld</", "en", "d> more"}) out += s.push(piece);
  CHECK(s.stopped());
  CHECK(s.matched() == "</end>");
  CHECK(out == "Hello world");
}

TEST_CASE("held-back text comes out when it turns out not to be a stop string") {
  StopChecker s({"STOP"});
  CHECK(s.push("abc ST") == "abc ");
  CHECK(s.push("ART") == "START");
  CHECK(s.push("x S") == "x ");
  CHECK(s.flush() == "S");
  CHECK_FALSE(s.stopped());
}

TEST_CASE("the earliest stop string wins") {
  StopChecker s({"bc", "ab"});
  CHECK(s.push("xabc") == "x");
  CHECK(s.matched() == "ab");
}
