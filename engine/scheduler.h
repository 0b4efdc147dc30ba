// Continuous-batching scheduler: pure bookkeeping over sequences and KV pages, no model.
// Each step it picks, within a token budget and a sequence cap, one decode token of every running
// sequence first, then prefill chunks of partially prefilled and waiting prompts (oldest first).
// A chunk that does not finish its prompt ends on a multiple of the sequence's chunk_align when
// the budget reaches one (the rest of the budget goes to the next sequence).
// With a prefill context cap (SchedulerOptions::max_prefill_context), the sequences that prefill in
// one step hold at most that many context tokens together; the first one always goes.
// When pages run out it preempts the newest running sequence: its pages are freed and it goes back
// to the waiting queue, to be recomputed later from its prompt and the tokens it has generated.
// With prefix caching (docs/prefix_caching.md), a sequence it admits first takes the cached pages
// of its longest cached prefix and computes only the rest; after each forward pass the caller
// publishes the full pages the step completed (cache_computed).
#pragma once
#include <cstdint>
#include <limits>
#include <map>
#include <vector>

#include "engine/page_allocator.h"

namespace stem {

// The scheduler's view of one sequence. The engine owns it and appends sampled tokens.
struct SeqState {
  int64_t id = 0;               // admission order: a larger id is newer
  std::vector<int32_t> tokens;  // the prompt, then the generated tokens
  int64_t num_computed = 0;     // leading tokens whose K/V are in the cache
  // Tokens of the prefill under way, set when the sequence is admitted: the prompt, or more when it
  // is recomputed after a preemption. A chunk that starts before it prefills; later ones decode.
  int64_t prefill_len = 0;
  std::vector<int32_t> pages;
  int64_t num_preemptions = 0;
  // Prefill chunks that stop short of the end of `tokens` end on a multiple of this where the
  // token budget allows: Stem's block (128) for Stem prefills, whose selection then does not
  // depend on the chunking (docs/stem.md); 1 otherwise.
  int64_t chunk_align = 1;
  // Prefix caching (docs/prefix_caching.md). The caller sets these before add() and whenever the
  // sequence is preempted (clearing page_hashes when the seed changes), and may lower
  // cacheable_tokens between steps. cacheable_tokens: the leading tokens whose K/V may be taken
  // from the cache and published (under the paper's Stem schedule, not the pages it computes
  // sparsely). cache_hit_align: a hit is cut back to a multiple of this many tokens, a multiple of
  // the page size (a causal Stem prefill restarts on a block boundary).
  PageHash cache_seed;
  int64_t cacheable_tokens = std::numeric_limits<int64_t>::max();
  int64_t cache_hit_align = 1;
  std::vector<PageHash> page_hashes;  // of its first full pages, computed as needed
  int64_t num_cached_pages = 0;       // its leading pages that are in the cache (taken or published)
  int64_t cached_tokens = 0;          // tokens its latest admission took from the cache

  int64_t pending() const { return static_cast<int64_t>(tokens.size()) - num_computed; }
};

// One sequence's share of a step: tokens [start, start + count) go through the model; when they
// reach the end of `tokens`, the last row's logits are sampled for the next token.
struct ScheduledSeq {
  SeqState* seq = nullptr;
  int64_t start = 0;
  int64_t count = 0;
  bool sample = false;
  bool admitted = false;  // the step admits it: a prefill begins (at start > 0 after a cache hit)
};

struct ScheduleResult {
  std::vector<ScheduledSeq> seqs;
  std::vector<SeqState*> preempted;  // sequences that lost their pages this step
  int64_t num_tokens = 0;
  bool empty() const { return seqs.empty(); }
};

struct SchedulerOptions {
  int64_t max_num_batched_tokens = 512;  // tokens per step (decode rows + prefill chunks)
  int64_t max_num_seqs = 64;             // sequences holding pages at once
  // The most context tokens, each sequence's counted in whole pages up to the end of its chunk,
  // that the sequences prefilling in one step may hold together; 0: no limit. A step's first
  // prefill always goes; one that would pass the cap waits for a later step. The backend's figure
  // (ModelBackend::max_prefill_context: the CUDA backend's staging of an FP8 KV cache).
  int64_t max_prefill_context = 0;
};

class Scheduler {
 public:
  Scheduler(PageAllocator& kv, const SchedulerOptions& options);

  // Queues a new sequence (pending() >= 1); it waits until pages and a slot are free.
  void add(SeqState* seq);
  // Forgets a finished or cancelled sequence and frees its pages now.
  void remove(SeqState* seq);
  // Picks the next step's work, reserves its pages and advances num_computed of what it picked
  // (the caller must run those tokens through the model before the next call).
  ScheduleResult schedule();
  // Publishes the full pages that the step `plan` computed, up to each sequence's cacheable_tokens
  // (call after its forward pass succeeded).
  void cache_computed(const ScheduleResult& plan);

  int64_t num_running() const { return static_cast<int64_t>(running_.size()); }
  int64_t num_waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t num_preemptions() const { return num_preemptions_; }
  // Prefix cache lookups, in tokens: of the sequences admitted (new or recomputed), the tokens they
  // had, and of those the ones taken from the cache.
  int64_t prefix_queries() const { return prefix_queries_; }
  int64_t prefix_hits() const { return prefix_hits_; }
  const PageAllocator& kv() const { return kv_; }
  const SchedulerOptions& options() const { return options_; }

 private:
  // What one step has left to give: tokens, and context for prefilling sequences.
  struct StepBudget {
    int64_t tokens = 0;
    int64_t prefill_context = 0;  // used so far
  };
  void preempt(SeqState* victim, ScheduleResult& out, StepBudget& budget);
  // The context a chunk of s from `start`, `count` tokens long, holds against the cap: 0 for a
  // decode chunk, else its end rounded up to whole pages.
  int64_t prefill_context(const SeqState& s, int64_t start, int64_t count) const;
  // Whether a chunk holding `context` fits the step's cap (taking it if so).
  bool take_prefill_context(int64_t context, StepBudget& budget) const;
  void release(SeqState* seq);
  // Computes seq's page hashes up to `pages` full pages of its tokens.
  void hash_pages(SeqState& seq, int64_t pages) const;

  PageAllocator& kv_;
  SchedulerOptions options_;
  // Keyed by id, so iteration is oldest first and the newest is the last entry.
  std::map<int64_t, SeqState*> running_, waiting_;
  int64_t num_preemptions_ = 0;
  int64_t prefix_queries_ = 0, prefix_hits_ = 0;
};

}  // namespace stem
