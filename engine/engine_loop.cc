#include "engine/engine_loop.h"

#include <spdlog/spdlog.h>

#include <memory>

namespace stem {

EngineLoop::EngineLoop(Engine& engine, int64_t max_queue)
    : engine_(engine), capacity_(engine.options().max_num_seqs + std::max<int64_t>(0, max_queue)) {
  counters_ = engine.counters();
  thread_ = std::thread([this] { run(); });
}

EngineLoop::~EngineLoop() {
  {
    std::lock_guard lock(mu_);
    accepting_ = false;
    stop_ = true;
    abort_ = true;
    abort_reason_ = "the server is shutting down";
  }
  wake_.notify_all();
  thread_.join();
}

void EngineLoop::submit(GenerateRequest raw, StreamSink sink) {
  Engine::ValidatedRequest request = engine_.validate(std::move(raw));
  const int64_t n = request.get().n;
  {
    std::lock_guard lock(mu_);
    if (!accepting_) throw ShuttingDownError("the server is shutting down and takes no new requests");
    if (in_flight_ + n > capacity_)
      throw QueueFullError("the request queue is full (" + std::to_string(in_flight_) + " sequences in flight, room for " +
                           std::to_string(capacity_) + "); retry later");
    in_flight_ += n;
    // Each finished sequence gives its room in the queue back, before the front end hears of it:
    // a client that resubmits on seeing the end must find the room there.
    intake_.push_back({std::move(request), [this, sink = std::move(sink)](const TokenEvent& e) {
                         if (e.finished) {
                           std::lock_guard lock(mu_);
                           if (--in_flight_ == 0) idle_.notify_all();
                         }
                         if (sink) sink(e);
                       }});
  }
  wake_.notify_one();
}

int64_t EngineLoop::drain(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  accepting_ = false;
  if (idle_.wait_for(lock, timeout, [&] { return in_flight_ == 0; })) return 0;
  const int64_t left = in_flight_;
  abort_ = true;
  abort_reason_ = "the server is shutting down; the request did not finish within the shutdown timeout";
  wake_.notify_all();
  idle_.wait(lock, [&] { return in_flight_ == 0; });
  return left;
}

EngineCounters EngineLoop::counters() const {
  std::lock_guard lock(mu_);
  return counters_;
}

int64_t EngineLoop::in_flight() const {
  std::lock_guard lock(mu_);
  return in_flight_;
}

void EngineLoop::run() {
  std::vector<Pending> batch;
  for (;;) {
    bool abort = false;
    std::string reason;
    {
      std::unique_lock lock(mu_);
      wake_.wait(lock, [&] { return stop_ || abort_ || !intake_.empty() || engine_.has_work(); });
      batch.swap(intake_);
      abort = abort_;
      reason = abort_reason_;
      abort_ = false;
    }
    for (Pending& p : batch) {
      const int32_t n = p.request.get().n;
      try {
        engine_.add_request(std::move(p.request), p.sink);
      } catch (const std::exception& e) {
        // submit() validated it; anything left is an engine fault, reported to that request only.
        TokenEvent ev;
        ev.finished = true;
        ev.finish = FinishReason::Abort;
        ev.error = e.what();
        for (int32_t i = 0; i < n; ++i) {
          ev.index = i;
          p.sink(ev);
        }
      }
    }
    batch.clear();
    if (abort) engine_.abort_all(reason);
    if (engine_.has_work()) {
      try {
        StepStats stats = engine_.step();
        if (observer_ && stats.num_seqs > 0) observer_(stats);
      } catch (const std::exception& e) {
        spdlog::error("engine step failed: {}; ending every request", e.what());
        engine_.abort_all(std::string("internal error: ") + e.what());
      }
    }
    EngineCounters c = engine_.counters();
    std::lock_guard lock(mu_);
    counters_ = c;
    counters_.num_waiting += static_cast<int64_t>(intake_.size());
    if (stop_ && !engine_.has_work() && intake_.empty()) return;
  }
}

}  // namespace stem
