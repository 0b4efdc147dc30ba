#include "engine/scheduler.h"

#include <algorithm>

#include "kernels/check.h"

namespace stem {

namespace {

// How many of s's pending tokens fit a budget: all of them, or a chunk cut back to end on a
// multiple of s.chunk_align when that leaves it at least one token.
int64_t chunk_size(const SeqState& s, int64_t budget) {
  const int64_t n = std::min(s.pending(), budget);
  if (n == s.pending() || s.chunk_align <= 1) return n;
  const int64_t aligned_end = (s.num_computed + n) / s.chunk_align * s.chunk_align;
  return aligned_end > s.num_computed ? aligned_end - s.num_computed : n;
}

}  // namespace

Scheduler::Scheduler(PageAllocator& kv, const SchedulerOptions& options) : kv_(kv), options_(options) {
  if (options.max_num_batched_tokens < 1) throw Error("max_num_batched_tokens must be >= 1");
  if (options.max_num_seqs < 1) throw Error("max_num_seqs must be >= 1");
}

void Scheduler::add(SeqState* seq) {
  STEM_CHECK(seq && seq->pending() >= 1, "a new sequence needs tokens to compute");
  STEM_CHECK(!running_.count(seq->id) && !waiting_.count(seq->id), "sequence ", seq->id, " is already queued");
  waiting_[seq->id] = seq;
}

void Scheduler::remove(SeqState* seq) {
  running_.erase(seq->id);
  waiting_.erase(seq->id);
  kv_.release(seq->pages);
}

void Scheduler::preempt(SeqState* victim, ScheduleResult& out, int64_t& budget) {
  // Undo its share of this step, if it had one: the pages it would have written are gone.
  auto it = std::find_if(out.seqs.begin(), out.seqs.end(), [&](const ScheduledSeq& s) { return s.seq == victim; });
  if (it != out.seqs.end()) {
    budget += it->count;
    out.seqs.erase(it);
  }
  running_.erase(victim->id);
  kv_.release(victim->pages);
  victim->num_computed = 0;
  ++victim->num_preemptions;
  ++num_preemptions_;
  waiting_[victim->id] = victim;  // its old id puts it ahead of every newer waiting sequence
  out.preempted.push_back(victim);
}

ScheduleResult Scheduler::schedule() {
  ScheduleResult out;
  int64_t budget = options_.max_num_batched_tokens;

  // Running sequences: decode rows first (they are cheap and keep streams flowing), then the rest
  // of partially prefilled prompts. Copies of the lists, because preemption edits running_.
  std::vector<SeqState*> order;
  for (auto& [id, s] : running_)
    if (s->pending() == 1) order.push_back(s);
  for (auto& [id, s] : running_)
    if (s->pending() > 1) order.push_back(s);
  for (SeqState* s : order) {
    if (budget == 0) break;
    if (!running_.count(s->id)) continue;  // preempted earlier in this step
    const int64_t n = chunk_size(*s, budget);
    bool placed = true;
    while (!kv_.reserve(s->pages, s->num_computed + n)) {
      SeqState* victim = std::prev(running_.end())->second;  // the newest
      preempt(victim, out, budget);
      if (victim == s) {
        placed = false;
        break;
      }
    }
    if (!placed) continue;
    out.seqs.push_back({s, s->num_computed, n, s->num_computed + n == static_cast<int64_t>(s->tokens.size())});
    budget -= n;
  }

  // Waiting sequences, oldest first, while the budget, the sequence cap and free pages allow.
  // A newcomer never preempts: it waits for pages instead.
  while (!waiting_.empty() && budget > 0 && num_running() < options_.max_num_seqs) {
    SeqState* s = waiting_.begin()->second;
    // One preempted this step would only be recomputed from scratch and preempted again.
    if (std::find(out.preempted.begin(), out.preempted.end(), s) != out.preempted.end()) break;
    const int64_t n = chunk_size(*s, budget);
    if (!kv_.reserve(s->pages, s->num_computed + n)) break;
    waiting_.erase(waiting_.begin());
    running_[s->id] = s;
    out.seqs.push_back({s, s->num_computed, n, s->num_computed + n == static_cast<int64_t>(s->tokens.size())});
    budget -= n;
  }

  for (ScheduledSeq& c : out.seqs) {
    c.seq->num_computed += c.count;
    out.num_tokens += c.count;
  }
  return out;
}

}  // namespace stem
