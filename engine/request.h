// What a front end (HTTP, gRPC, the CLI) hands the engine, and what the engine streams back.
// No transport types here: a front end turns its own request into a GenerateRequest and its
// sink turns TokenEvents into SSE events, gRPC messages or stdout.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/sampler.h"

namespace stem {

struct StopConditions {
  int32_t max_tokens = 256;
  std::vector<std::string> stop;        // stop strings (never part of the output)
  std::vector<int32_t> stop_token_ids;  // besides the model's EOS
  bool ignore_eos = false;
  bool include_stop_str = false;
};

// How a request's prompt is prefilled: Stem block-sparse attention (docs/stem.md) or dense.
// Stem still falls back to dense for prompts shorter than StemSettings::min_prompt_len.
enum class SparsePrefill { Dense, Stem };
// "dense", "stem": the names the CLI flag, the HTTP field and the gRPC field use.
const char* sparse_prefill_name(SparsePrefill mode);
// The mode a name names, or nullopt for any other string (the caller reports the bad value).
std::optional<SparsePrefill> parse_sparse_prefill(std::string_view name);

struct GenerateRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  StopConditions stop;
  int32_t n = 1;  // independent sequences sampled from the same prompt
  // Per-request override of the engine's default prefill mode (--sparse-prefill); unset: default.
  std::optional<SparsePrefill> sparse_prefill;
  // Requests with different salts never share prefix-cache pages (as vLLM's cache_salt); "" is
  // the shared, unsalted cache.
  std::string cache_salt;
  // Set by the front end (client gone, deadline passed); the engine drops the request and frees
  // its pages at its next step. Shared because the engine may still hold it after the caller left.
  std::shared_ptr<std::atomic<bool>> cancelled;
};

// Length: max_tokens or the context ran out. Stop: EOS, a stop token or a stop string.
// Cancelled: the front end set the flag. Abort: the engine ended it (shutdown, an internal error;
// TokenEvent::error says which).
enum class FinishReason { Length, Stop, Cancelled, Abort };
const char* finish_reason_name(FinishReason r);

// One event of one sequence, as streamed. A token event carries `token` >= 0; `text` is the new
// complete text (empty while a UTF-8 character or a possible stop string is incomplete). The last
// event of a sequence has `finished` set (it may carry the last token, or none: token -1).
struct TokenEvent {
  int32_t token = -1;
  std::string text;
  SampleResult sample;
  int32_t index = 0;  // which of the request's n sequences
  bool finished = false;
  FinishReason finish = FinishReason::Length;
  std::string stop_reason;  // the stop string, or the stop token id as text
  std::string error;        // with FinishReason::Abort
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;  // of this sequence so far, this event's token included
  int64_t cached_tokens = 0;      // of the prompt, taken from the prefix cache (the request's first prefill)
};
// Called on the engine's thread: it must be quick and must not call back into the engine.
using StreamSink = std::function<void(const TokenEvent&)>;

struct GenerateResult {
  std::vector<int32_t> tokens;
  std::vector<SampleResult> samples;
  std::string text;
  FinishReason finish = FinishReason::Length;
  std::string stop_reason;  // the stop string or token that ended it
  std::string error;
  int64_t prompt_tokens = 0;
};

}  // namespace stem
