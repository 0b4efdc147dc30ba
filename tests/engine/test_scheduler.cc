// The scheduler alone (no model): token budget, sequence cap, decode-first order, chunked
// prefill, preemption of the newest sequence when pages run out, and freeing on removal.
#include <memory>

#include "engine/scheduler.h"
#include "tests/test_util.h"

using namespace stem;

namespace {

struct Fixture {
  PageAllocator kv;
  Scheduler sched;
  std::vector<std::unique_ptr<SeqState>> seqs;
  Fixture(int64_t pages, int64_t budget, int64_t max_seqs, int64_t max_prefill_context = 0)
      : kv(pages, 16), sched(kv, {budget, max_seqs, max_prefill_context}) {}

  SeqState* add(int64_t prompt_len) {
    auto s = std::make_unique<SeqState>();
    s->id = static_cast<int64_t>(seqs.size());
    s->tokens.assign(prompt_len, 1);
    sched.add(s.get());
    seqs.push_back(std::move(s));
    return seqs.back().get();
  }
  // What the engine does after a forward pass: sampled sequences get one more token.
  void sample(const ScheduleResult& r) {
    for (const auto& c : r.seqs)
      if (c.sample) c.seq->tokens.push_back(7);
  }
};

int64_t count_of(const ScheduleResult& r, const SeqState* s) {
  for (const auto& c : r.seqs)
    if (c.seq == s) return c.count;
  return 0;
}

}  // namespace

TEST_CASE("scheduler: prompts are prefilled in chunks within the token budget") {
  Fixture f(64, 100, 8);
  SeqState* a = f.add(250);
  auto r = f.sched.schedule();
  REQUIRE(r.seqs.size() == 1);
  CHECK(r.seqs[0].start == 0);
  CHECK(r.seqs[0].count == 100);
  CHECK_FALSE(r.seqs[0].sample);
  CHECK(a->num_computed == 100);
  r = f.sched.schedule();
  CHECK(r.seqs[0].start == 100);
  r = f.sched.schedule();
  CHECK(r.seqs[0].count == 50);
  CHECK(r.seqs[0].sample);  // the chunk that ends the prompt yields the first token
  CHECK(r.num_tokens == 50);
  CHECK(f.kv.used_pages() == 16);  // 250 tokens in pages of 16
}

TEST_CASE("scheduler: decode tokens of running sequences come before new prefill") {
  Fixture f(64, 10, 8);
  SeqState* a = f.add(4);
  SeqState* b = f.add(4);
  auto r = f.sched.schedule();
  CHECK(count_of(r, a) == 4);
  CHECK(count_of(r, b) == 4);
  f.sample(r);
  SeqState* c = f.add(30);
  r = f.sched.schedule();
  // a and b decode one token each; c gets what is left of the budget of 10.
  REQUIRE(r.seqs.size() == 3);
  CHECK(r.seqs[0].seq == a);
  CHECK(r.seqs[1].seq == b);
  CHECK(r.seqs[0].count == 1);
  CHECK(r.seqs[1].count == 1);
  CHECK(count_of(r, c) == 8);
  CHECK(r.num_tokens == 10);
}

TEST_CASE("scheduler: the sequence cap holds newcomers back") {
  Fixture f(64, 1000, 2);
  SeqState* a = f.add(5);
  SeqState* b = f.add(5);
  SeqState* c = f.add(5);
  auto r = f.sched.schedule();
  CHECK(count_of(r, a) == 5);
  CHECK(count_of(r, b) == 5);
  CHECK(count_of(r, c) == 0);
  CHECK(f.sched.num_running() == 2);
  CHECK(f.sched.num_waiting() == 1);
  f.sample(r);
  f.sched.remove(a);  // finished: c takes its place at the next step
  r = f.sched.schedule();
  CHECK(count_of(r, b) == 1);
  CHECK(count_of(r, c) == 5);
}

TEST_CASE("scheduler: out of pages, the newest sequence is preempted and later recomputed") {
  // 4 pages of 16 tokens: two sequences of 32 tokens fill them.
  Fixture f(4, 1000, 8);
  SeqState* a = f.add(32);
  SeqState* b = f.add(32);
  auto r = f.sched.schedule();
  REQUIRE(r.seqs.size() == 2);
  f.sample(r);  // both now need a 3rd page for token 33
  CHECK(f.kv.free_pages() == 0);
  r = f.sched.schedule();
  REQUIRE(r.preempted.size() == 1);
  CHECK(r.preempted[0] == b);
  CHECK(b->num_computed == 0);
  CHECK(b->pages.empty());
  CHECK(b->num_preemptions == 1);
  CHECK(count_of(r, a) == 1);
  CHECK(count_of(r, b) == 0);  // not readmitted in the step that preempted it
  CHECK(f.sched.num_preemptions() == 1);
  CHECK(f.sched.num_waiting() == 1);
  f.sample(r);
  // a finishes; b comes back and recomputes its prompt and its generated token.
  f.sched.remove(a);
  CHECK(f.kv.free_pages() == 4);
  r = f.sched.schedule();
  REQUIRE(r.seqs.size() == 1);
  CHECK(r.seqs[0].seq == b);
  CHECK(r.seqs[0].start == 0);
  CHECK(r.seqs[0].count == 33);
  CHECK(r.seqs[0].sample);
}

TEST_CASE("scheduler: a sequence that cannot get pages preempts itself when it is the newest") {
  Fixture f(3, 1000, 8);
  SeqState* a = f.add(16);
  SeqState* b = f.add(32);
  auto r = f.sched.schedule();
  REQUIRE(r.seqs.size() == 2);
  f.sample(r);
  // a needs a 2nd page and there is none: b (newer) goes; b's own decode is not scheduled.
  r = f.sched.schedule();
  CHECK(count_of(r, a) == 1);
  CHECK(r.preempted == std::vector<SeqState*>{b});
  CHECK(f.kv.used_pages() == 2);
}

TEST_CASE("scheduler: removing a sequence (cancelled) frees its pages at once") {
  Fixture f(8, 1000, 8);
  SeqState* a = f.add(40);
  SeqState* b = f.add(3);
  auto r = f.sched.schedule();
  CHECK(f.kv.used_pages() == 4);
  f.sched.remove(a);
  CHECK(f.kv.used_pages() == 1);
  f.sample(r);
  r = f.sched.schedule();
  REQUIRE(r.seqs.size() == 1);
  CHECK(r.seqs[0].seq == b);
  // A waiting sequence can be removed too.
  SeqState* c = f.add(5);
  f.sched.remove(c);
  CHECK(f.sched.num_waiting() == 0);
  f.sched.remove(b);
  CHECK(f.kv.used_pages() == 0);
  CHECK(f.sched.schedule().empty());
}

TEST_CASE("scheduler: a newcomer waits for free pages instead of preempting") {
  Fixture f(2, 1000, 8);
  SeqState* a = f.add(20);
  auto r = f.sched.schedule();
  f.sample(r);
  SeqState* b = f.add(20);  // needs 2 pages, 0 free
  r = f.sched.schedule();
  CHECK(count_of(r, a) == 1);
  CHECK(count_of(r, b) == 0);
  CHECK(r.preempted.empty());
  CHECK(f.sched.num_waiting() == 1);
}

TEST_CASE("scheduler: bad options are refused") {
  PageAllocator kv(2, 16);
  CHECK(test::error_of([&] { Scheduler(kv, {0, 4}); }).find("max_num_batched_tokens") != std::string::npos);
  CHECK(test::error_of([&] { Scheduler(kv, {16, 0}); }).find("max_num_seqs") != std::string::npos);
}

TEST_CASE("scheduler: prefilling sequences hold at most max_prefill_context tokens of context together") {
  // Pages of 16; the cap is 16 pages. Two 200-token prompts (13 pages each) do not fit one step.
  const int64_t cap = GENERATE(256, 0);
  Fixture f(64, 1000, 8, cap);
  SeqState* a = f.add(200);
  SeqState* b = f.add(200);
  auto r = f.sched.schedule();
  if (cap == 0) {  // without a cap both prefill at once
    CHECK(r.seqs.size() == 2);
    return;
  }
  REQUIRE(r.seqs.size() == 1);
  CHECK(r.seqs[0].seq == a);
  CHECK(a->prefill_len == 200);
  CHECK(f.sched.num_waiting() == 1);  // b waits, though the token budget had room
  f.sample(r);
  // a decodes (a decode row holds no context against the cap) and b prefills.
  r = f.sched.schedule();
  REQUIRE(r.seqs.size() == 2);
  CHECK(count_of(r, a) == 1);
  CHECK(count_of(r, b) == 200);
  CHECK(b->prefill_len == 200);
}

TEST_CASE("scheduler: a chunked prefill's context counts up to its chunk's end; the step's first prefill always goes") {
  // Budget 128 tokens a step, cap 256 tokens (16 pages of 16).
  Fixture f(64, 128, 8, 256);
  SeqState* a = f.add(300);
  SeqState* b = f.add(40);
  auto r = f.sched.schedule();  // a: 0..128 (context 128); the budget is spent
  REQUIRE(r.seqs.size() == 1);
  r = f.sched.schedule();  // a: 128..256 (context 256); the budget is spent
  REQUIRE(r.seqs.size() == 1);
  CHECK(r.seqs[0].start == 128);
  r = f.sched.schedule();  // a: 256..300, context 304 > 256 but the step's first prefill; b (48 more) waits
  REQUIRE(r.seqs.size() == 1);
  CHECK(r.seqs[0].seq == a);
  CHECK(r.seqs[0].count == 44);
  CHECK(r.seqs[0].sample);
  CHECK(f.sched.num_waiting() == 1);
  f.sample(r);
  r = f.sched.schedule();  // a decodes, b prefills
  CHECK(count_of(r, a) == 1);
  CHECK(count_of(r, b) == 40);
}

TEST_CASE("scheduler: a preempted sequence's recompute is a prefill again, its generated tokens included") {
  // 8 pages of 16: a and b (60 tokens, 4 pages each) fill them; a's 65th token needs a fifth page,
  // and b, the newest, is preempted for it.
  Fixture f(8, 1000, 8, 256);
  SeqState* a = f.add(60);
  SeqState* b = f.add(60);
  auto r = f.sched.schedule();
  REQUIRE(r.seqs.size() == 2);  // 64 + 64 tokens of context: within the cap
  for (int i = 0; i < 10 && r.preempted.empty(); ++i) {
    f.sample(r);
    r = f.sched.schedule();
  }
  REQUIRE(r.preempted.size() == 1);
  CHECK(r.preempted[0] == b);
  CHECK(a->prefill_len == 60);  // a decodes on
  f.sched.remove(a);
  r = f.sched.schedule();
  REQUIRE(r.seqs.size() == 1);
  CHECK(r.seqs[0].seq == b);
  CHECK(r.seqs[0].start == 0);
  CHECK(r.seqs[0].count == static_cast<int64_t>(b->tokens.size()));
  CHECK(b->tokens.size() > 60);
  CHECK(b->prefill_len == static_cast<int64_t>(b->tokens.size()));
}

TEST_CASE("scheduler: a negative prefill context cap is refused") {
  PageAllocator kv(8, 16);
  CHECK_THROWS_WITH(Scheduler(kv, {16, 4, -1}), Catch::Matchers::Contains("max_prefill_context must be >= 0"));
}
