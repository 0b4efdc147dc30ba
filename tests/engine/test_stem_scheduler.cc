// Prefill chunks of Stem sequences end on Stem's 128-token blocks where the token budget allows,
// so that chunked prefill selects the same blocks as unchunked (docs/stem.md, "Chunked prefill").
#include "engine/scheduler.h"
#include "tests/catch.h"

using namespace stem;

namespace {

SeqState prompt(int64_t id, int64_t len, int64_t align) {
  SeqState s;
  s.id = id;
  s.tokens.assign(static_cast<size_t>(len), 1);
  s.chunk_align = align;
  return s;
}

// The [start, start + count) chunks one sequence gets, step by step, until its prompt is in.
std::vector<std::pair<int64_t, int64_t>> chunks(Scheduler& sched, SeqState& s) {
  std::vector<std::pair<int64_t, int64_t>> out;
  while (s.pending() > 0) {
    const ScheduleResult r = sched.schedule();
    REQUIRE(r.seqs.size() == 1);
    out.emplace_back(r.seqs[0].start, r.seqs[0].count);
    if (r.seqs[0].sample) s.tokens.push_back(2), s.num_computed = static_cast<int64_t>(s.tokens.size());
  }
  return out;
}

using Chunks = std::vector<std::pair<int64_t, int64_t>>;

}  // namespace

TEST_CASE("stem scheduler: chunks of an aligned prefill end on multiples of 128") {
  PageAllocator kv(256, 16);
  SECTION("a budget of 300 gives chunks of 256, then the rest") {
    Scheduler sched(kv, {300, 4});
    SeqState s = prompt(0, 1000, 128);
    sched.add(&s);
    CHECK(chunks(sched, s) == Chunks{{0, 256}, {256, 256}, {512, 256}, {768, 232}});
  }
  SECTION("without alignment the same budget cuts anywhere") {
    Scheduler sched(kv, {300, 4});
    SeqState s = prompt(0, 1000, 1);
    sched.add(&s);
    CHECK(chunks(sched, s) == Chunks{{0, 300}, {300, 300}, {600, 300}, {900, 100}});
  }
  SECTION("a budget below one block cuts where it must, and the next chunk aligns again") {
    Scheduler sched(kv, {100, 4});
    SeqState s = prompt(0, 300, 128);
    sched.add(&s);
    CHECK(chunks(sched, s) == Chunks{{0, 100}, {100, 28}, {128, 100}, {228, 72}});
  }
}

TEST_CASE("stem scheduler: what an aligned chunk leaves of the budget goes to the next sequence") {
  PageAllocator kv(256, 16);
  Scheduler sched(kv, {300, 4});
  SeqState a = prompt(0, 1000, 128), b = prompt(1, 40, 1);
  sched.add(&a);
  sched.add(&b);
  const ScheduleResult r = sched.schedule();
  REQUIRE(r.seqs.size() == 2);
  CHECK(r.seqs[0].count == 256);
  CHECK(r.seqs[1].count == 40);
  CHECK(r.num_tokens == 296);
}
