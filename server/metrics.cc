#include "server/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

namespace stem {

using namespace prometheus;

ServerMetrics::ServerMetrics() : registry_(std::make_shared<Registry>()) {
  auto gauge = [&](const char* name, const char* help) -> Gauge* {
    return &BuildGauge().Name(name).Help(help).Register(*registry_).Add({});
  };
  auto counter = [&](const char* name, const char* help) -> Counter* {
    return &BuildCounter().Name(name).Help(help).Register(*registry_).Add({});
  };
  auto histogram = [&](const char* name, const char* help, Histogram::BucketBoundaries b) -> Histogram* {
    return &BuildHistogram().Name(name).Help(help).Register(*registry_).Add({}, std::move(b));
  };
  running_ = gauge("stemserve_num_requests_running", "Sequences in the running batch (holding KV pages)");
  waiting_ = gauge("stemserve_num_requests_waiting", "Sequences queued for a slot (new or preempted)");
  kv_usage_ = gauge("stemserve_kv_cache_usage_perc", "Fraction of KV-cache pages in use (0 to 1)");
  kv_used_pages_ = gauge("stemserve_kv_cache_used_pages", "KV-cache pages in use");
  kv_total_pages_ = gauge("stemserve_kv_cache_total_pages", "KV-cache pages in the pool");
  preemptions_ = counter("stemserve_num_preemptions_total", "Sequences preempted (pages freed, recomputed later)");
  prompt_tokens_ = counter("stemserve_prompt_tokens_total", "Prompt tokens of accepted requests");
  generation_tokens_ = counter("stemserve_generation_tokens_total", "Tokens generated");
  prefix_queries_ = counter("stemserve_prefix_cache_queries_total",
                            "Prefix cache: tokens of the sequences looked up when admitted (new or recomputed)");
  prefix_hits_ = counter("stemserve_prefix_cache_hits_total", "Prefix cache: of those tokens, the ones found cached");
  prefix_cached_pages_ = gauge("stemserve_prefix_cache_pages",
                               "KV-cache pages holding a cached prefix (in use, or evictable when nobody holds them)");
  ttft_ = histogram("stemserve_time_to_first_token_seconds", "Time from request arrival to its first token",
                    {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80});
  itl_ = histogram("stemserve_inter_token_latency_seconds", "Time between consecutive tokens of a sequence",
                   {0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5, 5});
  e2e_ = histogram("stemserve_e2e_request_latency_seconds", "Time from request arrival to its last token",
                   {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320});
  batch_seqs_ = histogram("stemserve_batch_size", "Sequences per engine step (decode rows and prefill chunks)",
                          {1, 2, 4, 8, 16, 32, 64, 128, 256});
  batch_tokens_ = histogram("stemserve_batch_tokens", "Tokens per engine step",
                            {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192});
  finished_ = &BuildCounter()
                   .Name("stemserve_request_success_total")
                   .Help("Requests finished, by finish reason")
                   .Register(*registry_);
}

ServerMetrics::~ServerMetrics() = default;

void ServerMetrics::observe_step(const StepStats& step) {
  batch_seqs_->Observe(static_cast<double>(step.num_seqs));
  batch_tokens_->Observe(static_cast<double>(step.num_tokens));
}

void ServerMetrics::observe_first_token(double seconds) { ttft_->Observe(seconds); }
void ServerMetrics::observe_inter_token(double seconds) { itl_->Observe(seconds); }

void ServerMetrics::observe_finished(double e2e_seconds, const std::string& finish_reason) {
  e2e_->Observe(e2e_seconds);
  finished_->Add({{"finished_reason", finish_reason}}).Increment();
}

std::string ServerMetrics::render(const EngineCounters& c) {
  {
    std::lock_guard lock(mu_);
    running_->Set(static_cast<double>(c.num_running));
    waiting_->Set(static_cast<double>(c.num_waiting));
    kv_used_pages_->Set(static_cast<double>(c.used_pages));
    kv_total_pages_->Set(static_cast<double>(c.total_pages));
    kv_usage_->Set(c.total_pages ? static_cast<double>(c.used_pages) / static_cast<double>(c.total_pages) : 0.0);
    preemptions_->Increment(static_cast<double>(c.preemptions - last_.preemptions));
    prompt_tokens_->Increment(static_cast<double>(c.prompt_tokens - last_.prompt_tokens));
    generation_tokens_->Increment(static_cast<double>(c.generation_tokens - last_.generation_tokens));
    prefix_queries_->Increment(static_cast<double>(c.prefix_cache_queries - last_.prefix_cache_queries));
    prefix_hits_->Increment(static_cast<double>(c.prefix_cache_hits - last_.prefix_cache_hits));
    prefix_cached_pages_->Set(static_cast<double>(c.cached_pages));
    last_ = c;
  }
  return TextSerializer().Serialize(registry_->Collect());
}

void RequestTimer::start(ServerMetrics* metrics, int32_t n) {
  metrics_ = metrics;
  open_ = n;
  last_token_.assign(static_cast<size_t>(n), Clock::time_point{});
}

void RequestTimer::observe(const TokenEvent& e) {
  const auto now = Clock::now();
  auto seconds = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  if (e.token >= 0) {
    auto& last = last_token_.at(static_cast<size_t>(e.index));
    if (last == Clock::time_point{})
      metrics_->observe_first_token(seconds(now - arrival_));
    else
      metrics_->observe_inter_token(seconds(now - last));
    last = now;
  }
  if (e.finished && --open_ == 0) metrics_->observe_finished(seconds(now - arrival_), finish_reason_name(e.finish));
}

}  // namespace stem
