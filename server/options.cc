#include "server/options.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>

namespace stem {

StemSettings stem_served_settings() {
  StemSettings s;
  s.selector = StemSelector::Threshold;
  s.threshold = kStemServedThreshold;
  return s;
}

namespace {

// How the model is loaded, the same flags on generate and serve.
void add_load_flags(CLI::App* cmd, EngineOptions& e) {
  cmd->add_option("--device", e.device, "cpu or cuda")->envname("STEMSERVE_DEVICE")->capture_default_str();
  cmd->add_option_function<std::string>(
         "--load-format", [&e](const std::string& v) { e.dummy_weights = v == "dummy"; },
         "auto (safetensors) or dummy (random weights for config.json)")
      ->check(CLI::IsMember({"auto", "dummy"}))->envname("STEMSERVE_LOAD_FORMAT")->default_str("auto");
  cmd->add_option("--gpu-memory-fraction", e.gpu_memory_fraction, "Share of GPU memory for weights and KV cache")
      ->check(CLI::Range(0.05, 0.99))->envname("STEMSERVE_GPU_MEMORY_FRACTION")->capture_default_str();
  cmd->add_option("--quantization", e.quantization,
                  "fp8: E4M3 weights (a scale per output channel, quantized at load) and activations (per "
                  "token); FP8 checkpoints (compressed-tensors) run in FP8 without it")
      ->check(CLI::IsMember({"fp8"}))->envname("STEMSERVE_QUANTIZATION");
  cmd->add_option("--kv-cache-dtype", e.kv_cache_dtype,
                  "KV cache dtype: auto or bf16 (the device's: bf16 on cuda, f32 on cpu), or fp8 (E4M3 with a scale per "
                  "token and KV head: about twice the tokens in the same memory)")
      ->check(CLI::IsMember({"auto", "bf16", "fp8"}))->envname("STEMSERVE_KV_CACHE_DTYPE")->capture_default_str();
}

// Stem sparse prefill (docs/stem.md), the same flags on generate and serve, over the served
// defaults (stem_served_settings: the threshold selector; the engine's own default is the paper's
// method). The settings' own check (check_stem_settings) runs once every flag is read.
void add_prefill_flags(CLI::App* cmd, EngineOptions& e) {
  StemSettings& st = e.stem;
  st = stem_served_settings();
  cmd->add_option_function<std::string>(
         "--sparse-prefill", [&e](const std::string& v) { e.sparse_prefill = parse_sparse_prefill(v).value(); },
         "Prefill attention: stem (block-sparse, for prompts of --stem-min-prompt-len tokens or more) or dense; a "
         "request may choose with \"sparse_prefill\"")
      ->check(CLI::IsMember({"stem", "dense"}))->envname("STEMSERVE_SPARSE_PREFILL")
      ->default_str(sparse_prefill_name(e.sparse_prefill));
  cmd->add_option("--stem-min-prompt-len", st.min_prompt_len, "Prompts shorter than this prefill densely")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_STEM_MIN_PROMPT_LEN")->capture_default_str();
  cmd->add_option("--stem-alpha", st.alpha, "Position decay: the last query block keeps alpha times the first's budget")
      ->check(CLI::Range(0.0, 1.0))->envname("STEMSERVE_STEM_ALPHA")->capture_default_str();
  cmd->add_option("--stem-lambda", st.lambda, "Weight of the value-norm bonus in a key block's score")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_STEM_LAMBDA")->capture_default_str();
  cmd->add_option("--stem-block-size", st.block_size, "Query and key block in tokens (the kernels take 128 only)")
      ->check(CLI::Validator(
          [](std::string& v) { return v == "128" ? std::string() : "only 128 is supported (the kernels' block), got " + v; },
          "128"))
      ->envname("STEMSERVE_STEM_BLOCK_SIZE")->capture_default_str();
  cmd->add_option("--stem-stride", st.stride, "Antidiagonal stride of the estimate (must divide the block size)")
      ->check(CLI::PositiveNumber)->envname("STEMSERVE_STEM_STRIDE")->capture_default_str();
  cmd->add_option("--stem-sink-blocks", st.sink_blocks, "Leading key blocks every query block keeps")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_STEM_SINK_BLOCKS")->capture_default_str();
  cmd->add_option("--stem-window-blocks", st.window_blocks, "Key blocks up to and including its own that a query "
                  "block keeps")
      ->check(CLI::PositiveNumber)->envname("STEMSERVE_STEM_WINDOW_BLOCKS")->capture_default_str();
  cmd->add_option("--stem-dense-layers", st.dense_layers, "The first layers that stay dense")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_STEM_DENSE_LAYERS")->capture_default_str();
  cmd->add_option("--stem-budget-rate", st.budget_rate, "Multiplies the blocks each query block keeps (1: the paper's)")
      ->check(CLI::PositiveNumber)->envname("STEMSERVE_STEM_BUDGET_RATE")->capture_default_str();
  cmd->add_option_function<std::string>(
         "--stem-selector", [&st](const std::string& v) { st.selector = parse_stem_selector(v); },
         "How a query block picks key blocks by score: topk (Stem's budget schedule), threshold (the fewest blocks "
         "reaching --stem-threshold of the softmax mass), adaptive (threshold, at most the schedule's budget), none "
         "(sink and window blocks only)")
      ->check(CLI::IsMember({"topk", "threshold", "adaptive", "none"}))->envname("STEMSERVE_STEM_SELECTOR")
      ->default_str(stem_selector_name(st.selector));
  cmd->add_option("--stem-threshold", st.threshold, "threshold and adaptive selectors: the softmax mass of a query "
                  "block's scores to keep, in (0, 1]")
      ->envname("STEMSERVE_STEM_THRESHOLD")->capture_default_str();
  cmd->add_option_function<std::string>(
         "--stem-schedule", [&st](const std::string& v) { st.causal = v == "causal"; },
         "topk and adaptive budgets: paper (they depend on the prompt's length) or causal (a query block keeps the "
         "start budget of a prompt that ends with it, so prefix caching shares Stem's pages)")
      ->check(CLI::IsMember({"paper", "causal"}))->envname("STEMSERVE_STEM_SCHEDULE")
      ->default_str(st.causal ? "causal" : "paper");
  cmd->add_option("--stem-dense-tail", st.dense_tail_blocks, "The last query blocks of a prompt that stay dense "
                  "(the question the answer comes from); a selection with a tail is not causal, so prefix caching "
                  "keeps only the blocks Stem computes densely")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_STEM_DENSE_TAIL")->capture_default_str();
  // Every flag read (environment included): the settings' own check, as the engine makes it.
  cmd->parse_complete_callback([&st] {
    try {
      check_stem_settings(st);
    } catch (const Error& e) {
      const std::string what = e.what();
      const size_t at = what.find("Stem: ");  // the message, without the check's file and line
      throw CLI::ValidationError(at == std::string::npos ? what : what.substr(at));
    }
  });
}

void add_model_flag(CLI::App* cmd, std::string& model) {
  cmd->add_option("--model", model, "Hugging Face model folder (config.json, model.safetensors, tokenizer)")
      ->required()->envname("STEMSERVE_MODEL");
}

void add_sampling_flags(CLI::App* cmd, GenerateOptions& o) {
  SamplingParams& s = o.sampling;
  cmd->add_option("--temperature", s.temperature, "Sampling temperature; 0 is greedy")
      ->envname("STEMSERVE_TEMPERATURE")->capture_default_str();
  cmd->add_option("--top-k", s.top_k, "Keep the k most likely tokens; 0 is off")->envname("STEMSERVE_TOP_K");
  cmd->add_option("--top-p", s.top_p, "Nucleus sampling mass; 1 is off")->envname("STEMSERVE_TOP_P");
  cmd->add_option("--min-p", s.min_p, "Drop tokens below min_p times the top probability")->envname("STEMSERVE_MIN_P");
  cmd->add_option("--repetition-penalty", s.repetition_penalty, "Penalty on tokens already seen; 1 is off")
      ->envname("STEMSERVE_REPETITION_PENALTY");
  cmd->add_option("--presence-penalty", s.presence_penalty, "OpenAI presence penalty")
      ->envname("STEMSERVE_PRESENCE_PENALTY");
  cmd->add_option("--frequency-penalty", s.frequency_penalty, "OpenAI frequency penalty")
      ->envname("STEMSERVE_FREQUENCY_PENALTY");
  cmd->add_option("--seed", o.seed, "Seed for sampling; the same seed gives the same tokens")->envname("STEMSERVE_SEED");
  cmd->add_option("--max-tokens", o.stop.max_tokens, "Most tokens to generate")
      ->envname("STEMSERVE_MAX_TOKENS")->capture_default_str();
  cmd->add_option("--stop", o.stop.stop, "Stop string (repeatable)")->envname("STEMSERVE_STOP");
  cmd->add_option("--stop-token-id", o.stop.stop_token_ids, "Stop token id (repeatable)")
      ->envname("STEMSERVE_STOP_TOKEN_ID");
  cmd->add_flag("--ignore-eos", o.stop.ignore_eos, "Keep generating past the end-of-sequence token")
      ->envname("STEMSERVE_IGNORE_EOS");
  cmd->add_option("--logprobs", s.top_logprobs,
                  "Print JSON lines instead of the text: each token with the n most likely at its step (1-20), "
                  "then the whole text")
      ->envname("STEMSERVE_LOGPROBS");
}

}  // namespace

CLI::App* add_generate_command(CLI::App& app, GenerateOptions& o) {
  CLI::App* g = app.add_subcommand("generate", "Generate a completion for one prompt and stream it to stdout");
  add_model_flag(g, o.model);
  g->add_option("--prompt", o.prompt, "The prompt text")->required();
  g->add_flag("--chat", o.chat, "Wrap the prompt as a user message in the model's chat template");
  g->add_option("--system", o.system, "System message (with --chat)");
  g->add_option("--max-model-len", o.engine.max_model_len, "Context length (default: the model's)")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_MAX_MODEL_LEN");
  add_load_flags(g, o.engine);
  add_sampling_flags(g, o);
  add_prefill_flags(g, o.engine);
  // Random weights may come without a tokenizer (a bare config.json).
  g->callback([&o] {
    o.engine.load_tokenizer = !o.engine.dummy_weights || std::filesystem::exists(std::filesystem::path(o.model) / "tokenizer.json");
  });
  return g;
}

CLI::App* add_serve_command(CLI::App& app, ServeOptions& o) {
  CLI::App* s = app.add_subcommand("serve", "Serve the model over an OpenAI-compatible HTTP API and gRPC");
  ApiOptions& api = o.api;
  EngineOptions& e = o.engine;
  add_model_flag(s, o.model);
  s->add_option("--served-model-name", api.served_model_name, "The model's name in the API (default: the folder's name)")
      ->envname("STEMSERVE_SERVED_MODEL_NAME");
  s->add_option("--host", api.host, "Address to listen on")->envname("STEMSERVE_HOST")->capture_default_str();
  s->add_option("--port", api.port, "HTTP port (0: any free port, logged at start)")
      ->check(CLI::Range(0, 65535))->envname("STEMSERVE_PORT")->capture_default_str();
  s->add_option("--grpc-port", api.grpc_port, "gRPC port (0: any free port, logged at start; -1: no gRPC server)")
      ->check(CLI::Range(-1, 65535))->envname("STEMSERVE_GRPC_PORT")->capture_default_str();
  s->add_option("--api-key", api.api_key,
                "Require 'Authorization: Bearer <key>' on every endpoint but /health (gRPC: the metadata, "
                "on every call but health, reflection included)")
      ->envname("STEMSERVE_API_KEY");
  s->add_option("--max-queue", o.max_queue, "Sequences that may wait beyond --max-num-seqs; more get 429")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_MAX_QUEUE")->capture_default_str();
  s->add_option("--max-num-batched-tokens", e.max_num_batched_tokens,
                "Tokens per engine step (decode + prefill chunks); 0: 8192 on cuda, 512 on cpu")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_MAX_NUM_BATCHED_TOKENS")->capture_default_str();
  s->add_option("--max-num-seqs", e.max_num_seqs, "Sequences in the running batch")
      ->check(CLI::PositiveNumber)->envname("STEMSERVE_MAX_NUM_SEQS")->capture_default_str();
  s->add_option("--max-model-len", e.max_model_len, "Context length (default: the model's)")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_MAX_MODEL_LEN");
  s->add_option("--kv-cache-tokens", e.kv_cache_tokens,
                "KV-cache size in tokens (default: cpu, one max-model-len sequence; cuda, what memory allows)")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_KV_CACHE_TOKENS");
  s->add_option("--max-request-bytes", api.max_request_bytes, "Largest request body; larger ones get 413")
      ->check(CLI::PositiveNumber)->envname("STEMSERVE_MAX_REQUEST_BYTES")->capture_default_str();
  s->add_option("--http-threads", api.http_threads,
                "Connections served at once (default: max-num-seqs + max-queue + 16)")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_HTTP_THREADS");
  s->add_option("--shutdown-timeout", o.shutdown_timeout,
                "Seconds in-flight requests get to finish after SIGTERM/SIGINT before they are ended with an error")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_SHUTDOWN_TIMEOUT")->capture_default_str();
  s->add_flag("--enable-prefix-caching,!--no-enable-prefix-caching", e.enable_prefix_caching,
              "Keep the KV pages of computed prompts and reuse them for later prompts with the same prefix (on by "
              "default; docs/prefix_caching.md)")
      ->envname("STEMSERVE_ENABLE_PREFIX_CACHING");
  s->add_option("--tool-call-parser", api.tool_call_parser,
                "How the model writes tool calls: hermes, llama3_json or mistral (default: from its chat template)")
      ->check(CLI::IsMember({"hermes", "llama3_json", "mistral"}))->envname("STEMSERVE_TOOL_CALL_PARSER");
  add_load_flags(s, e);
  add_prefill_flags(s, e);
  // Defaults that depend on other flags, once every flag is read.
  s->callback([&o] {
    if (o.api.http_threads == 0)
      o.api.http_threads = static_cast<int>(std::min<int64_t>(o.engine.max_num_seqs + o.max_queue + 16, 1024));
  });
  return s;
}

}  // namespace stem
