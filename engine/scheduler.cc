#include "engine/scheduler.h"

#include <algorithm>
#include <span>

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
  if (options.max_prefill_context < 0) throw Error("max_prefill_context must be >= 0");
}

int64_t Scheduler::prefill_context(const SeqState& s, int64_t start, int64_t count) const {
  if (start >= s.prefill_len) return 0;
  const int64_t P = kv_.page_size();
  return (start + count + P - 1) / P * P;
}

bool Scheduler::take_prefill_context(int64_t context, StepBudget& budget) const {
  const int64_t cap = options_.max_prefill_context;
  if (cap > 0 && context > 0 && budget.prefill_context > 0 && budget.prefill_context + context > cap) return false;
  budget.prefill_context += context;
  return true;
}

void Scheduler::add(SeqState* seq) {
  STEM_CHECK(seq && seq->pending() >= 1, "a new sequence needs tokens to compute");
  STEM_CHECK(!running_.count(seq->id) && !waiting_.count(seq->id), "sequence ", seq->id, " is already queued");
  waiting_[seq->id] = seq;
}

void Scheduler::remove(SeqState* seq) {
  running_.erase(seq->id);
  waiting_.erase(seq->id);
  release(seq);
}

void Scheduler::release(SeqState* seq) {
  kv_.release(seq->pages);
  seq->num_cached_pages = 0;
}

void Scheduler::hash_pages(SeqState& s, int64_t pages) const {
  const int64_t P = kv_.page_size();
  pages = std::min(pages, static_cast<int64_t>(s.tokens.size()) / P);
  for (auto k = static_cast<int64_t>(s.page_hashes.size()); k < pages; ++k) {
    const PageHash& parent = k == 0 ? s.cache_seed : s.page_hashes.back();
    s.page_hashes.push_back(chain_page_hash(parent, std::span(s.tokens).subspan(static_cast<size_t>(k * P),
                                                                                 static_cast<size_t>(P))));
  }
}

void Scheduler::cache_computed(const ScheduleResult& plan) {
  if (!kv_.prefix_caching()) return;
  for (const ScheduledSeq& c : plan.seqs) {
    SeqState& s = *c.seq;
    const int64_t P = kv_.page_size(), full = std::min(s.num_computed, s.cacheable_tokens) / P;
    if (full <= s.num_cached_pages) continue;
    hash_pages(s, full);
    for (int64_t k = s.num_cached_pages; k < full; ++k)
      kv_.publish(s.pages[static_cast<size_t>(k)], s.page_hashes[static_cast<size_t>(k)],
                  std::span(s.tokens).subspan(static_cast<size_t>(k * P), static_cast<size_t>(P)));
    s.num_cached_pages = full;
  }
}

void Scheduler::preempt(SeqState* victim, ScheduleResult& out, StepBudget& budget) {
  // Undo its share of this step, if it had one: the pages it would have written are gone.
  auto it = std::find_if(out.seqs.begin(), out.seqs.end(), [&](const ScheduledSeq& s) { return s.seq == victim; });
  if (it != out.seqs.end()) {
    budget.tokens += it->count;
    budget.prefill_context -= prefill_context(*victim, it->start, it->count);
    out.seqs.erase(it);
  }
  running_.erase(victim->id);
  release(victim);
  victim->num_computed = 0;
  ++victim->num_preemptions;
  ++num_preemptions_;
  waiting_[victim->id] = victim;  // its old id puts it ahead of every newer waiting sequence
  out.preempted.push_back(victim);
}

ScheduleResult Scheduler::schedule() {
  ScheduleResult out;
  StepBudget budget{options_.max_num_batched_tokens};

  // Running sequences: decode rows first (they are cheap and keep streams flowing), then the rest
  // of partially prefilled prompts. Copies of the lists, because preemption edits running_.
  std::vector<SeqState*> order;
  for (auto& [id, s] : running_)
    if (s->pending() == 1) order.push_back(s);
  for (auto& [id, s] : running_)
    if (s->pending() > 1) order.push_back(s);
  for (SeqState* s : order) {
    if (budget.tokens == 0) break;
    if (!running_.count(s->id)) continue;  // preempted earlier in this step
    const int64_t n = chunk_size(*s, budget.tokens);
    const int64_t context = prefill_context(*s, s->num_computed, n);
    if (!take_prefill_context(context, budget)) continue;  // its prefill goes on in a later step
    bool placed = true;
    while (!kv_.reserve(s->pages, s->num_computed + n)) {
      SeqState* victim = std::prev(running_.end())->second;  // the newest
      preempt(victim, out, budget);
      if (victim == s) {
        placed = false;
        break;
      }
    }
    if (!placed) {
      budget.prefill_context -= context;
      continue;
    }
    out.seqs.push_back({s, s->num_computed, n, s->num_computed + n == static_cast<int64_t>(s->tokens.size())});
    budget.tokens -= n;
  }

  // Waiting sequences, oldest first, while the budget, the sequence cap and free pages allow.
  // A newcomer never preempts: it waits for pages instead.
  while (!waiting_.empty() && budget.tokens > 0 && num_running() < options_.max_num_seqs) {
    SeqState* s = waiting_.begin()->second;
    // One preempted this step would only be recomputed from scratch and preempted again.
    if (std::find(out.preempted.begin(), out.preempted.end(), s) != out.preempted.end()) break;
    // Its longest cached prefix of full pages, leaving at least one token to compute (its logits),
    // cut back to a multiple of its hit alignment.
    const int64_t P = kv_.page_size();
    STEM_CHECK(s->cache_hit_align >= 1 && (s->cache_hit_align == 1 || s->cache_hit_align % P == 0),
               "a prefix-cache hit's alignment (", s->cache_hit_align, " tokens) must be whole pages of ", P);
    const int64_t align = std::max<int64_t>(1, s->cache_hit_align / P);
    const int64_t max_pages = std::min(s->cacheable_tokens, static_cast<int64_t>(s->tokens.size()) - 1) / P;
    if (kv_.prefix_caching() && max_pages >= align) {
      hash_pages(*s, max_pages);
      s->num_cached_pages = kv_.take_cached(s->page_hashes, s->tokens, max_pages, s->pages, align);
      s->num_computed = s->num_cached_pages * P;
    }
    const int64_t n = chunk_size(*s, budget.tokens);
    s->prefill_len = static_cast<int64_t>(s->tokens.size());
    const int64_t context = prefill_context(*s, s->num_computed, n);
    if (!take_prefill_context(context, budget)) {
      release(s);
      s->num_computed = 0;
      break;
    }
    if (!kv_.reserve(s->pages, s->num_computed + n)) {
      budget.prefill_context -= context;
      release(s);
      s->num_computed = 0;
      break;
    }
    s->cached_tokens = s->num_computed;
    if (kv_.prefix_caching()) {
      prefix_queries_ += static_cast<int64_t>(s->tokens.size());
      prefix_hits_ += s->cached_tokens;
    }
    waiting_.erase(waiting_.begin());
    running_[s->id] = s;
    out.seqs.push_back(
        {s, s->num_computed, n, s->num_computed + n == static_cast<int64_t>(s->tokens.size()), /*admitted=*/true});
    budget.tokens -= n;
  }

  for (ScheduledSeq& c : out.seqs) {
    c.seq->num_computed += c.count;
    out.num_tokens += c.count;
  }
  return out;
}

}  // namespace stem
