// Where an eager step's device time goes, op by op (bench_model --profile): an event is recorded
// on the stream after each launch, and after the step the time between two events is added to the
// op that the later one closes. Off by default; the events cost a few microseconds per launch, and
// graph captures never profile (an event recorded into a graph would not time anything).
#pragma once
#include <cuda_runtime_api.h>

#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_check.cuh"

namespace stem {

class StepProfile {
 public:
  StepProfile() = default;
  StepProfile(const StepProfile&) = delete;
  StepProfile& operator=(const StepProfile&) = delete;
  ~StepProfile() {
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
  }

  // Starts a step's timeline on `stream` when `on`; marks are ignored otherwise.
  void begin(bool on, cudaStream_t stream) {
    active_ = on;
    used_ = 0;
    ops_.clear();
    if (active_) record(stream);
  }

  // The time since the previous mark (or begin) belongs to `op`.
  void mark(const char* op, cudaStream_t stream) {
    if (!active_) return;
    ops_.push_back(op);
    record(stream);
  }

  // After the stream has been synchronised: adds the step's times to the totals.
  void collect() {
    if (!active_) return;
    active_ = false;
    for (size_t i = 0; i < ops_.size(); ++i) {
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, events_[i], events_[i + 1]));
      add(ops_[i], ms);
    }
  }

  // Milliseconds per op, summed over the profiled steps, in the order the ops first ran.
  const std::vector<std::pair<std::string, double>>& totals() const { return totals_; }
  void clear() { totals_.clear(); }

 private:
  void record(cudaStream_t stream) {
    if (used_ == events_.size()) {
      cudaEvent_t e = nullptr;
      CUDA_CHECK(cudaEventCreate(&e));
      events_.push_back(e);
    }
    CUDA_CHECK(cudaEventRecord(events_[used_++], stream));
  }

  void add(const char* op, double ms) {
    for (auto& [name, total] : totals_)
      if (name == op) {
        total += ms;
        return;
      }
    totals_.emplace_back(op, ms);
  }

  bool active_ = false;
  size_t used_ = 0;
  std::vector<cudaEvent_t> events_;
  std::vector<const char*> ops_;
  std::vector<std::pair<std::string, double>> totals_;
};

}  // namespace stem
