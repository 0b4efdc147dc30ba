// The engine's own thread: it owns the Engine (and so the device), takes requests from a bounded
// queue and steps the engine while there is work. Front ends (HTTP, gRPC) submit from any thread;
// events come back through each request's sink on the loop's thread.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "engine/engine.h"

namespace stem {

// The queue is full: the front end answers 429 / RESOURCE_EXHAUSTED.
class QueueFullError : public Error {
 public:
  using Error::Error;
};
// The loop is draining for shutdown and takes no new requests (503 / UNAVAILABLE).
class ShuttingDownError : public Error {
 public:
  using Error::Error;
};

class EngineLoop {
 public:
  // max_queue: sequences that may wait beyond the max_num_seqs the engine runs at once.
  EngineLoop(Engine& engine, int64_t max_queue);
  ~EngineLoop();  // aborts what is still in flight and joins the thread
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // Validates on the caller's thread (stem::Error naming the problem), then queues. Throws
  // QueueFullError when max_num_seqs + max_queue sequences are in flight, ShuttingDownError
  // once drain() has begun. Every accepted request ends with one finished event per sequence.
  void submit(GenerateRequest request, StreamSink sink);
  // Stops taking requests, waits up to `timeout` for those in flight, then ends the rest with
  // FinishReason::Abort. Returns how many sequences were aborted.
  int64_t drain(std::chrono::milliseconds timeout);

  const Engine& engine() const { return engine_; }
  // Counters as of the last step (the engine itself is only touched by the loop's thread).
  EngineCounters counters() const;
  int64_t in_flight() const;
  // Called on the loop's thread after each step that ran a batch. Set it before submitting.
  void set_step_observer(std::function<void(const StepStats&)> observer) { observer_ = std::move(observer); }

 private:
  struct Pending {
    Engine::ValidatedRequest request;
    StreamSink sink;
  };
  void run();

  Engine& engine_;
  int64_t capacity_;
  std::function<void(const StepStats&)> observer_;
  mutable std::mutex mu_;
  std::condition_variable wake_, idle_;
  std::vector<Pending> intake_;
  int64_t in_flight_ = 0;  // sequences submitted and not yet finished
  bool accepting_ = true, abort_ = false, stop_ = false;
  std::string abort_reason_;
  EngineCounters counters_;
  std::thread thread_;
};

}  // namespace stem
