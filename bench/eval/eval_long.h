// The long-context evaluation (issue 21; docs/stem.md "Long-context accuracy"): every method of
// long_methods (eval_methods.h), calibrated to target block densities at the calibration length,
// on the prompts make_tasks.py generated (stem_eval --data DIR):
//   calibrate  each knob until the method's density on the calibration prompt (the first
//              perplexity document, cut to --calibrate-length) is nearest its target: top-k families
//              by a search over the integer k_s that host bounds of the schedule narrow first, the
//              threshold by bisection, sink + window exactly on the host (eval_calibrate.h)
//   timing     one prefill of the calibration prompt per method: the attention ops' device time
//              (the CUDA backend's per-op profile, planning included) and the step's
//   ppl        teacher-forced NLL of each document through the sparse path, in chunks
//   niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt, cwe (or "ruler" for all six)
//              greedy answers scored by RULER's string_match_all
//   code       greedy next line: exact match and edit similarity
// Results accumulate: --results names an earlier run's JSON whose methods (with their calibration)
// and records are kept; a record is keyed by method × task × length × index and is not run again
// (unless --redo). The JSON is rewritten after every unit of work, so a run cut short (or stopped
// by --time-budget) keeps what it did, and the next run does the rest.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace stem::eval {

struct LongOptions {
  std::string model, device = "cpu", data, results_in, json_out = "stem_eval_long.json";
  std::vector<std::string> tasks;    // empty: calibrate, timing, ppl, every task of the data
  std::vector<int64_t> lengths;      // empty: the data's, longest first
  std::vector<std::string> methods;  // by name; empty: all
  std::vector<std::string> families;
  std::vector<double> targets = {0.15, 0.25, 0.35};
  int64_t from = 0, limit = -1;  // prompt indices [from, from + limit) of each task and length
  int64_t docs = -1;             // perplexity documents (the first n); −1: all
  int64_t batch = 8;             // prompts decoded together
  int64_t chunk = 4096;          // perplexity prefill chunk (tokens, a multiple of 128; 0: one step)
  int64_t calibrate_length = 0;  // 0: the longest of --lengths
  int64_t min_prompt_len = 1024;  // every method's (so the 8K prompts go through the sparse path too)
  int timing_reps = 3;
  double time_budget = 0;  // seconds; 0: none. Work stops before a unit that would pass it
  bool redo = false;
  bool quick = false;  // dense and one uncalibrated Stem setting sparse at ~1K tokens (the CTest)
  std::string command;  // recorded with the session
  std::string gpu;      // the card's name, recorded with the session and every timing record
  // "fp8": the model in FP8 (BackendOptions::quantization: E4M3 weights and activations). Every
  // method is then named "<name>+fp8" (its own records beside the bf16 ones) and keeps the bf16
  // method's calibrated knob unless it has one of its own, so a row differs from its bf16 twin
  // only by FP8.
  std::string quantization;
  // "fp8": the KV cache in FP8 (BackendOptions::kv_cache_dtype); methods named "<name>+fp8kv" (after
  // any "+fp8"), with the calibrated knob of the method without it, as for quantization.
  std::string kv_cache_dtype = "auto";
};

// Runs what the options select; returns the process's exit code.
int run_long(const LongOptions& options);

}  // namespace stem::eval
