// The ops the model's forward pass (models/llama.h) is written against, once for every backend.
// Each backend implements them with its twin kernels, which share their signatures and contracts:
// the CPU backend with kernels/cpu (fp32), the CUDA backend with kernels/cuda (bf16 activations,
// an f32 residual stream, on its stream and GEMM context). Each op here is the kernels' op of the
// same name (its comment there is the contract) without what the backend holds; views are in the
// backend's memory. On the CUDA path no op allocates or waits for the device, so a decode step's
// ops can be captured into a graph.
#pragma once
#include <cstdint>

#include "kernels/view.h"

namespace stem {

class ModelOps {
 public:
  virtual ~ModelOps() = default;

  virtual void embedding(const TensorView& out, const TensorView& ids, const TensorView& table) = 0;
  virtual void rmsnorm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps) = 0;
  virtual void add_rmsnorm(const TensorView& out, const TensorView& residual, const TensorView& x,
                           const TensorView& weight, float eps) = 0;
  // out = a · wᵀ + bias (bias empty: none).
  virtual void matmul(const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& bias) = 0;
  virtual void rope_kv_write(const TensorView& q, const TensorView& k, const TensorView& v,
                             const TensorView& positions, const TensorView& inv_freq, const TensorView& k_cache,
                             const TensorView& v_cache, const TensorView& slots) = 0;
  // Dense paged attention (kernels/cpu/attention.h).
  virtual void attention(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                         const TensorView& v_cache, const TensorView& page_table, const TensorView& kv_lens,
                         const TensorView& query_start, float scale, int64_t sliding_window) = 0;
  // One layer's Stem prefill (kernels/cpu/stem_attention.h, kernels/cuda/stem.cuh): the same
  // arguments; the step's host metadata, settings and figures are the backend's.
  virtual void stem_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache,
                              const TensorView& v_cache, const TensorView& page_table, const TensorView& kv_lens,
                              const TensorView& query_start, float scale, int64_t sliding_window) = 0;
  virtual void swiglu(const TensorView& out, const TensorView& gate, const TensorView& up) = 0;
  // Profiling: the device time since the previous mark belongs to `op` (models/cuda/profile.h).
  virtual void mark(const char* op) {}
};

// Ops that hand every call on to another backend's ops: the base of a decorator that observes or
// replaces some of them (ModelBackend::set_op_decorator), e.g. bench/eval/ keeping each layer's
// attention inputs of a real forward.
class ForwardingOps : public ModelOps {
 public:
  void wrap(ModelOps& inner) { inner_ = &inner; }

  void embedding(const TensorView& out, const TensorView& ids, const TensorView& table) override {
    inner_->embedding(out, ids, table);
  }
  void rmsnorm(const TensorView& out, const TensorView& x, const TensorView& weight, float eps) override {
    inner_->rmsnorm(out, x, weight, eps);
  }
  void add_rmsnorm(const TensorView& out, const TensorView& residual, const TensorView& x, const TensorView& weight,
                   float eps) override {
    inner_->add_rmsnorm(out, residual, x, weight, eps);
  }
  void matmul(const TensorView& out, const TensorView& a, const TensorView& w, const TensorView& bias) override {
    inner_->matmul(out, a, w, bias);
  }
  void rope_kv_write(const TensorView& q, const TensorView& k, const TensorView& v, const TensorView& positions,
                     const TensorView& inv_freq, const TensorView& k_cache, const TensorView& v_cache,
                     const TensorView& slots) override {
    inner_->rope_kv_write(q, k, v, positions, inv_freq, k_cache, v_cache, slots);
  }
  void attention(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                 const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start, float scale,
                 int64_t sliding_window) override {
    inner_->attention(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window);
  }
  void stem_attention(const TensorView& out, const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                      const TensorView& page_table, const TensorView& kv_lens, const TensorView& query_start,
                      float scale, int64_t sliding_window) override {
    inner_->stem_attention(out, q, k_cache, v_cache, page_table, kv_lens, query_start, scale, sliding_window);
  }
  void swiglu(const TensorView& out, const TensorView& gate, const TensorView& up) override {
    inner_->swiglu(out, gate, up);
  }
  void mark(const char* op) override { inner_->mark(op); }

 private:
  ModelOps* inner_ = nullptr;
};

}  // namespace stem
