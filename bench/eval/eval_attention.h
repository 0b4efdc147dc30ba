// The attention-level measures of the Stem accuracy evaluation, on the CPU reference (fp32): the
// Q, K, V of every sparse layer captured from one dense forward of a real-text prompt (the CPU
// backend's own forward, models/llama.cc, its attention ops observed by a decorator), then per
// method and layer the block density of its lists and the relative error of its attention output
// against dense attention on the same Q/K/V. The densities also calibrate each family's knob to
// the target densities (calibrate_method).
#pragma once
#include <nlohmann/json.hpp>
#include <vector>

#include "bench/eval/eval_model.h"
#include "kernels/cpu/stem_plan.h"

namespace stem::eval {

struct CapturedLayer {
  int64_t layer = 0;
  std::vector<float> q;     // [T, Hq, D], after RoPE
  std::vector<float> k, v;  // caches [pages, page_size, Hkv, D]: position p at slot p
};

// One sequence of T tokens and the captured layers, in the views cpu::stem_plan takes.
struct Capture {
  int64_t tokens = 0, q_heads = 0, kv_heads = 0, dim = 0, page_size = 16, pages = 0;
  float scale = 0;
  std::vector<int32_t> page_table, kv_lens, query_start, prompt_lens;
  std::vector<CapturedLayer> layers;
  double seconds = 0;
};

// A dense prefill of `ids` by `model` (on the CPU) that keeps the Q/K/V of layers [first_layer, L).
// Leaves the model's method dense.
Capture capture_qkv(EvalModel& model, const std::vector<int32_t>& ids, int64_t first_layer);

// The method's plan of one captured layer.
cpu::StemPlan plan_layer(const Capture& c, const CapturedLayer& layer, const StemSettings& settings);

// Listed / causal (query block, head, key block) triples of every `stride`-th captured layer, and
// in total over them.
struct Density {
  std::vector<double> by_layer;
  double total = 0;
};
Density measure_density(const Capture& c, const Method& m, size_t stride = 1);

// Turns the method's knob until its total density over every other captured layer is within
// `tolerance` of its target (bisection; windows are whole blocks, so the nearest window).
void calibrate_method(const Capture& c, Method& m, double tolerance);

// The rows the attention error is measured on: those of the query blocks i with
// i % every == every − 1 and the last block (a sample: dense attention costs L² per layer), in the
// captured layers `layers` (indices into Capture::layers), with their dense outputs.
struct ErrorSample {
  std::vector<size_t> layers;
  int64_t every = 8;
  std::vector<char> keep;                 // [nb]: the sampled query blocks
  std::vector<std::vector<float>> dense;  // per sampled layer: dense attention, [T, Hq, D] (rows not sampled: 0)
};
ErrorSample make_error_sample(const Capture& c, std::vector<size_t> layers, int64_t every, int64_t block_size);

// Per sampled layer: ‖out − dense‖ / ‖dense‖ of the method's attention output over the sampled rows.
std::vector<double> attention_error(const Capture& c, const Method& m, const ErrorSample& sample);

}  // namespace stem::eval
