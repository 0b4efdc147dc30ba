// Prometheus metrics of the serving path (prometheus-cpp core; exposed by GET /metrics):
// requests running and waiting, KV-cache usage, preemptions, prompt and generated tokens,
// prefix-cache queries and hits (in tokens) and cached pages, histograms of time to first token, inter-token latency, end-to-end latency and batch size.
#pragma once
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace prometheus {
class Registry;
class Gauge;
class Counter;
class Histogram;
template <typename T>
class Family;
}  // namespace prometheus

namespace stem {

class ServerMetrics {
 public:
  ServerMetrics();
  ~ServerMetrics();

  // Engine thread, after each step that ran a batch.
  void observe_step(const StepStats& step);
  // Per request, from the timings the HTTP side measured.
  void observe_first_token(double seconds);
  void observe_inter_token(double seconds);
  void observe_finished(double e2e_seconds, const std::string& finish_reason);
  // The text exposition, with gauges and counters refreshed from the engine's counters.
  std::string render(const EngineCounters& counters);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Gauge *running_, *waiting_, *kv_usage_, *kv_used_pages_, *kv_total_pages_, *prefix_cached_pages_;
  prometheus::Counter *preemptions_, *prompt_tokens_, *generation_tokens_, *prefix_queries_, *prefix_hits_;
  prometheus::Histogram *ttft_, *itl_, *e2e_, *batch_seqs_, *batch_tokens_;
  prometheus::Family<prometheus::Counter>* finished_;
  std::mutex mu_;  // render() turns the engine's running totals into counter increments
  EngineCounters last_;
};

// One request's latencies as its events arrive (on the engine's thread): time to first token
// and the gaps between tokens per sequence, end to end once all of its n sequences finished.
class RequestTimer {
 public:
  using Clock = std::chrono::steady_clock;
  // Timing starts at construction (the request's arrival); start() names its n sequences.
  void start(ServerMetrics* metrics, int32_t n);
  void observe(const TokenEvent& e);

 private:
  ServerMetrics* metrics_ = nullptr;
  Clock::time_point arrival_ = Clock::now();
  std::vector<Clock::time_point> last_token_;
  int32_t open_ = 0;
};

}  // namespace stem
