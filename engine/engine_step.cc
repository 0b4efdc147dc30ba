// Engine's request side: validation, queueing, the batched step and the one-shot generate().
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <limits>
#include <numeric>

#include "engine/engine.h"
#include "engine/engine_sequence.h"
#include "text/tokenizer.h"

namespace stem {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Length: return "length";
    case FinishReason::Stop: return "stop";
    case FinishReason::Cancelled: return "cancelled";
    case FinishReason::Abort: return "abort";
  }
  return "?";
}

const char* sparse_prefill_name(SparsePrefill mode) { return mode == SparsePrefill::Stem ? "stem" : "dense"; }

std::optional<SparsePrefill> parse_sparse_prefill(std::string_view name) {
  if (name == "stem") return SparsePrefill::Stem;
  if (name == "dense") return SparsePrefill::Dense;
  return std::nullopt;
}

namespace {
// For seeds the caller did not fix: distinct per sequence, unpredictable across runs.
uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace

Engine::ValidatedRequest Engine::validate(GenerateRequest req) const {
  const int64_t n = static_cast<int64_t>(req.prompt.size());
  if (n == 0) throw Error("the prompt is empty");
  if (n >= max_model_len_)
    throw Error("the prompt has " + std::to_string(n) + " tokens; the model's context is " +
                std::to_string(max_model_len_) + " tokens, which must also leave room for one generated token");
  for (int32_t t : req.prompt)
    if (t < 0 || t >= config_.vocab_size) throw Error("prompt token id " + std::to_string(t) + " is outside the vocabulary");
  req.sampling.validate();
  if (req.stop.max_tokens < 0) throw Error("max_tokens must be >= 0");
  if (req.n < 1) throw Error("n must be >= 1");
  if (req.n > options_.max_num_seqs)
    throw Error("n is " + std::to_string(req.n) + "; at most max_num_seqs (" + std::to_string(options_.max_num_seqs) +
                ") sequences run at once");
  if (!req.stop.stop.empty() && !tokenizer_) throw Error("stop strings need a tokenizer");
  return ValidatedRequest(std::move(req));
}

void Engine::add_request(ValidatedRequest valid, StreamSink sink) {
  auto a = std::make_unique<Active>();
  a->request = std::move(valid.request_);
  a->prompt_len = static_cast<int64_t>(a->request.prompt.size());
  const int64_t max_new = std::min<int64_t>(a->request.stop.max_tokens, max_model_len_ - a->prompt_len);
  a->sink = std::move(sink);
  const GenerateRequest& r = a->request;
  for (int32_t i = 0; i < r.n; ++i) {
    // A fixed seed gives each of the n sequences its own stream, the same on every run.
    SamplingParams params = r.sampling;
    if (params.seed) params.seed = *params.seed + static_cast<uint64_t>(i);
    auto s = std::make_unique<Sequence>(a.get(), i, params, splitmix64(seed_state_),
                                        SequenceOutput(tokenizer_.get(), r.stop, eos_ids_, max_new));
    s->id = next_seq_id_++;
    s->tokens = r.prompt;
    s->stem = r.sparse_prefill.value_or(options_.sparse_prefill) == SparsePrefill::Stem;
    prepare_prefill(*s);
    a->seqs.push_back(std::move(s));
  }
  a->unfinished = r.n;
  prompt_tokens_total_ += a->prompt_len;
  Active& added = *active_.emplace_back(std::move(a));
  for (auto& s : added.seqs) {
    if (max_new > 0) {
      scheduler_->add(s.get());
    } else {
      TokenEvent e;
      e.finish = FinishReason::Length;
      finish(*s, std::move(e));
    }
  }
  if (added.unfinished == 0) active_.pop_back();
}

void Engine::prepare_prefill(Sequence& seq) const {
  // The next prefill covers every token the sequence has: its prompt, or more when recomputed.
  const StemSettings& st = options_.stem;
  const bool stem_prefill = seq.stem && static_cast<int64_t>(seq.tokens.size()) >= st.min_prompt_len;
  // Chunks of a Stem prefill end on block boundaries, so its selection is the unchunked one.
  seq.chunk_align = stem_prefill ? st.block_size : 1;
  // Whole blocks of a causal selection are the same in every prompt that starts with them: cached
  // as their own kind of K/V (the settings in the seed), never shared with dense pages.
  seq.stem_pages = stem_prefill && config_.sliding_window == 0 && stem_selection_causal(st);
  const PageHash seed = prefix_seed(model_identity_, seq.stem_pages ? std::string_view(stem_kv_kind_) : kDenseKvKind,
                                    seq.request->request.cache_salt);
  if (!(seed == seq.cache_seed)) {
    seq.cache_seed = seed;
    seq.page_hashes.clear();
  }
  // A hit then restarts the prefill on a block boundary (and on a page: both divide 128).
  seq.cache_hit_align = seq.stem_pages ? std::lcm(st.block_size, int64_t{kv_->page_size()}) : 1;
  seq.cacheable_tokens = cacheable_tokens(seq);
}

int64_t Engine::cacheable_tokens(const Sequence& seq) const {
  constexpr int64_t kAll = std::numeric_limits<int64_t>::max();
  if (!seq.stem) return kAll;
  const int64_t B = options_.stem.block_size;
  // A causal selection: the prefill's whole blocks. The last, partial one was selected with some
  // of its queries missing; tokens decoded after the prefill were computed by decode steps.
  if (seq.stem_pages) return static_cast<int64_t>(seq.tokens.size()) / B * B;
  // The paper's schedule: the selection of a block depends on the prompt's whole length, so a
  // page computed sparsely is not the page another prompt would compute: only the leading blocks
  // that the schedule keeps dense (k(i) >= i + 1; at least 42 blocks at 8K with the paper's
  // settings) hold dense K/V, the same as any dense prefill's. Decoded tokens after a sparse
  // prefill attend to sparse K/V: not cached.
  const auto len = static_cast<int32_t>(seq.tokens.size());
  const int32_t kv_len[] = {len}, query_start[] = {0, len};
  for (const StemQueryBlock& b : stem_query_blocks(kv_len, query_start, kv_len, config_.sliding_window, options_.stem))
    if (b.sparse) return int64_t{b.block} * B;
  return kAll;
}

void Engine::finish(Sequence& seq, TokenEvent e) {
  scheduler_->remove(&seq);
  seq.done = true;
  --seq.request->unfinished;
  e.finished = true;
  e.index = seq.index;
  e.prompt_tokens = seq.request->prompt_len;
  e.completion_tokens = seq.output.num_generated();
  e.cached_tokens = std::max<int64_t>(0, seq.request->cached_tokens);
  if (seq.request->sink) seq.request->sink(e);
}

void Engine::abort_all(const std::string& why) {
  for (auto& a : active_)
    for (auto& s : a->seqs)
      if (!s->done) {
        TokenEvent e;
        e.finish = FinishReason::Abort;
        e.error = why;
        finish(*s, std::move(e));
      }
  active_.clear();
}

EngineCounters Engine::counters() const {
  EngineCounters c;
  c.num_running = scheduler_->num_running();
  c.num_waiting = scheduler_->num_waiting();
  c.used_pages = kv_->used_pages();
  c.total_pages = kv_->num_pages();
  c.preemptions = scheduler_->num_preemptions();
  c.prompt_tokens = prompt_tokens_total_;
  c.generation_tokens = generation_tokens_total_;
  c.stem_sparse_blocks = stem_sparse_blocks_total_;
  c.prefix_cache_queries = scheduler_->prefix_queries();
  c.prefix_cache_hits = scheduler_->prefix_hits();
  c.cached_pages = kv_->cached_pages();
  return c;
}

StepStats Engine::step() {
  StepStats stats;
  // Cancelled requests go first, so their pages are free for this step's schedule.
  for (auto& a : active_) {
    if (!a->request.cancelled || !a->request.cancelled->load()) continue;
    for (auto& s : a->seqs)
      if (!s->done) {
        TokenEvent e;
        e.finish = FinishReason::Cancelled;
        finish(*s, std::move(e));
      }
  }
  active_.remove_if([](const auto& a) { return a->unfinished == 0; });

  const int64_t preempted_before = scheduler_->num_preemptions();
  ScheduleResult plan = scheduler_->schedule();
  stats.num_preempted = scheduler_->num_preemptions() - preempted_before;
  for (SeqState* p : plan.preempted) {
    spdlog::debug("preempted sequence {} ({} tokens): out of KV pages", p->id, p->tokens.size());
    // Its recompute is a prefill of every token it has now (more than its prompt).
    prepare_prefill(static_cast<Sequence&>(*p));
  }
  if (plan.empty()) return stats;

  // One forward pass: every scheduled sequence contributes a run of rows.
  ForwardBatch b;
  int32_t max_pages = 0;
  for (const ScheduledSeq& c : plan.seqs) max_pages = std::max(max_pages, static_cast<int32_t>(c.seq->pages.size()));
  b.max_pages = max_pages;
  b.query_start.push_back(0);
  std::vector<Sequence*> sampled;
  for (const ScheduledSeq& c : plan.seqs) {
    Sequence& st = static_cast<Sequence&>(*c.seq);
    // A prefill begins when the sequence is admitted (a new prompt, or a recompute after a
    // preemption), at position 0 or after the pages it took from the prefix cache, and covers
    // every token the sequence has then (the scheduler's prefill_len); its later chunks and its
    // decode rows follow.
    if (c.admitted) {
      if (st.request->cached_tokens < 0) st.request->cached_tokens = st.cached_tokens;
      if (st.cached_tokens > 0)
        spdlog::debug("prefix cache hit: sequence {} takes {} of its {} tokens ({} pages) from the cache", st.id,
                      st.cached_tokens, st.tokens.size(), st.num_cached_pages);
    }
    const bool stem_rows = st.stem && c.start < st.prefill_len;
    if (stem_rows && st.stem_pages) {
      // A chunk that starts or ends inside a block leaves that block dense (docs/stem.md, a budget
      // under one block): from there on this prefill's K/V are not an unchunked prefill's.
      const int64_t B = options_.stem.block_size, end = c.start + c.count;
      if (c.start % B != 0) st.cacheable_tokens = std::min(st.cacheable_tokens, c.start / B * B);
      if (end % B != 0 && end < st.prefill_len) st.cacheable_tokens = std::min(st.cacheable_tokens, end / B * B);
    }
    b.prompt_lens.push_back(stem_rows ? static_cast<int32_t>(st.prefill_len) : 0);
    b.stem.push_back(stem_rows ? 1 : 0);
    stats.stem_seqs += stem_rows && st.prefill_len >= options_.stem.min_prompt_len;
    for (int64_t p = c.start; p < c.start + c.count; ++p) {
      b.tokens.push_back(st.tokens[p]);
      b.positions.push_back(static_cast<int32_t>(p));
      b.slots.push_back(kv_->slot(st.pages, p));
    }
    b.query_start.push_back(static_cast<int32_t>(b.tokens.size()));
    b.kv_lens.push_back(static_cast<int32_t>(c.start + c.count));
    b.page_table.insert(b.page_table.end(), st.pages.begin(), st.pages.end());
    b.page_table.resize(b.page_table.size() + (max_pages - st.pages.size()), 0);
    if (c.sample) {
      b.logit_rows.push_back(static_cast<int32_t>(b.tokens.size() - 1));
      sampled.push_back(static_cast<Sequence*>(c.seq));
    }
    stats.num_decode += c.count == 1 && c.sample;
  }
  stats.num_seqs = b.num_seqs();
  stats.num_tokens = b.num_tokens();

  // How to sample each logit row: the op's parameters and, where a penalty is on, the
  // sequence's penalty tokens (kept incrementally by its Sampler).
  // Structured outputs: a constrained row's grammar mask goes with it (applied where the logits
  // are: on the device for the CUDA backend).
  // Built while the backend runs the step (ModelBackend::forward_sample with a prepare function).
  const auto mask_words = static_cast<size_t>((config_.vocab_size + 31) / 32);
  const auto prepare = [&sampled, mask_words](SamplingBatch& sb) {
    for (Sequence* s : sampled) {
      const int64_t prompt_len = s->request->prompt_len;
      sb.add_row(s->sampler.row(static_cast<int64_t>(s->tokens.size()) - prompt_len));
      const std::span<const PenaltyToken> pen = s->sampler.penalties(s->tokens, prompt_len);
      sb.add_penalties(pen.data(), pen.size());
      if (const uint32_t* allowed = s->sampler.allowed()) sb.add_mask(allowed, mask_words);
    }
  };

  const auto t0 = std::chrono::steady_clock::now();
  SampledTokens out;
  try {
    backend_->forward_sample(b, prepare, out);
  } catch (const std::exception& e) {
    // A failed step poisons only the requests in it; the engine goes on with the others.
    spdlog::error("forward step failed ({} sequences, {} tokens): {}", stats.num_seqs, stats.num_tokens, e.what());
    for (const ScheduledSeq& c : plan.seqs)
      for (auto& a : active_)
        for (auto& s : a->seqs)
          if (s.get() == c.seq && !s->done) {
            TokenEvent ev;
            ev.finish = FinishReason::Abort;
            ev.error = std::string("internal error: ") + e.what();
            finish(*s, std::move(ev));
          }
    active_.remove_if([](const auto& a) { return a->unfinished == 0; });
    return stats;
  }
  stats.forward_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  stats.device_ms = backend_->last_step_device_ms();
  scheduler_->cache_computed(plan);
  stats.stem = backend_->last_stem_stats();
  stem_sparse_blocks_total_ += stats.stem.sparse_blocks;
  if (stats.stem.sparse_blocks > 0)
    spdlog::debug("stem: {} sparse query blocks over the layers ({} sequences); skipped {} of {} causal key blocks "
                  "(cpu)", stats.stem.sparse_blocks, stats.stem_seqs, stats.stem.skipped_key_blocks,
                  stats.stem.causal_key_blocks);

  for (size_t r = 0; r < sampled.size(); ++r) {
    Sequence& s = *sampled[r];
    const int64_t prompt_len = s.request->prompt_len;
    SampleResult sample = s.sampler.result(out, static_cast<int64_t>(r), config_.vocab_size);
    s.sampler.accept(sample.token);
    s.tokens.push_back(sample.token);
    ++generation_tokens_total_;
    ++stats.num_sampled;
    TokenEvent e = s.output.on_token(sample.token, sample);
    e.index = s.index;
    e.prompt_tokens = prompt_len;
    e.cached_tokens = std::max<int64_t>(0, s.request->cached_tokens);
    if (e.finished) {
      finish(s, std::move(e));
    } else if (s.request->sink) {
      s.request->sink(e);
    }
  }
  active_.remove_if([](const auto& a) { return a->unfinished == 0; });
  return stats;
}

GenerateResult Engine::generate(const GenerateRequest& request, const StreamSink& sink) {
  if (request.n != 1) throw Error("generate() runs one sequence (n = 1)");
  GenerateResult r;
  r.prompt_tokens = static_cast<int64_t>(request.prompt.size());
  bool done = false;
  add_request(request, [&](const TokenEvent& e) {
    if (e.token >= 0) {
      r.tokens.push_back(e.token);
      r.samples.push_back(e.sample);
    }
    r.text += e.text;
    if (sink && (e.token >= 0 || !e.text.empty())) sink(e);
    if (e.finished) {
      done = true;
      r.finish = e.finish;
      r.stop_reason = e.stop_reason;
      r.error = e.error;
    }
  });
  while (!done) step();
  return r;
}

}  // namespace stem
