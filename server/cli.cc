#include "server/cli.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "text/tokenizer.h"
#include "server/serve.h"

namespace stem {

namespace {

struct GenerateArgs {
  std::string model;
  std::string prompt;
  bool chat = false;
  std::string system;
  SamplingParams sampling;
  StopConditions stop;
  int64_t seed = -1;
  bool show_logprobs = false;
  int64_t max_model_len = 0;
  std::string device = "cpu";
  std::string load_format = "auto";
  double gpu_memory_fraction = 0.9;
  SparsePrefill sparse_prefill = SparsePrefill::Stem;
  StemSettings stem;
};

// Stem sparse prefill (docs/stem.md), the same flags on generate and serve. The settings' own
// check (check_stem_settings) runs when the engine loads; these catch what a flag alone can.
void add_prefill_flags(CLI::App* cmd, SparsePrefill& mode, StemSettings& st) {
  cmd->add_option_function<std::string>(
         "--sparse-prefill", [&mode](const std::string& v) { mode = parse_sparse_prefill(v).value(); },
         "Prefill attention: stem (block-sparse, for prompts of --stem-min-prompt-len tokens or more) or dense; a "
         "request may choose with \"sparse_prefill\"")
      ->check(CLI::IsMember({"stem", "dense"}))->envname("STEMSERVE_SPARSE_PREFILL")->default_str("stem");
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
}

void add_sampling_flags(CLI::App* cmd, GenerateArgs& a) {
  cmd->add_option("--temperature", a.sampling.temperature, "Sampling temperature; 0 is greedy")
      ->envname("STEMSERVE_TEMPERATURE")->capture_default_str();
  cmd->add_option("--top-k", a.sampling.top_k, "Keep the k most likely tokens; 0 is off")->envname("STEMSERVE_TOP_K");
  cmd->add_option("--top-p", a.sampling.top_p, "Nucleus sampling mass; 1 is off")->envname("STEMSERVE_TOP_P");
  cmd->add_option("--min-p", a.sampling.min_p, "Drop tokens below min_p times the top probability")
      ->envname("STEMSERVE_MIN_P");
  cmd->add_option("--repetition-penalty", a.sampling.repetition_penalty, "Penalty on tokens already seen; 1 is off")
      ->envname("STEMSERVE_REPETITION_PENALTY");
  cmd->add_option("--presence-penalty", a.sampling.presence_penalty, "OpenAI presence penalty")
      ->envname("STEMSERVE_PRESENCE_PENALTY");
  cmd->add_option("--frequency-penalty", a.sampling.frequency_penalty, "OpenAI frequency penalty")
      ->envname("STEMSERVE_FREQUENCY_PENALTY");
  cmd->add_option("--seed", a.seed, "Seed for sampling; the same seed gives the same tokens")->envname("STEMSERVE_SEED");
  cmd->add_option("--max-tokens", a.stop.max_tokens, "Most tokens to generate")
      ->envname("STEMSERVE_MAX_TOKENS")->capture_default_str();
  cmd->add_option("--stop", a.stop.stop, "Stop string (repeatable)")->envname("STEMSERVE_STOP");
  cmd->add_option("--stop-token-id", a.stop.stop_token_ids, "Stop token id (repeatable)")
      ->envname("STEMSERVE_STOP_TOKEN_ID");
  cmd->add_flag("--ignore-eos", a.stop.ignore_eos, "Keep generating past the end-of-sequence token")
      ->envname("STEMSERVE_IGNORE_EOS");
  cmd->add_option("--logprobs", a.sampling.top_logprobs, "Print JSON lines instead of the text: each token with the n most likely at its step (1-20), then the whole text")
      ->envname("STEMSERVE_LOGPROBS");
}

int run_generate(const GenerateArgs& a) {
  EngineOptions opts;
  opts.max_model_len = a.max_model_len;
  opts.device = a.device;
  opts.dummy_weights = a.load_format == "dummy";
  opts.load_tokenizer = !opts.dummy_weights || std::filesystem::exists(std::filesystem::path(a.model) / "tokenizer.json");
  opts.gpu_memory_fraction = a.gpu_memory_fraction;
  opts.sparse_prefill = a.sparse_prefill;
  opts.stem = a.stem;
  Engine engine(a.model, opts);
  std::string text = a.prompt;
  if (a.chat) {
    nlohmann::ordered_json messages = nlohmann::ordered_json::array();
    if (!a.system.empty()) messages.push_back({{"role", "system"}, {"content", a.system}});
    messages.push_back({{"role", "user"}, {"content", a.prompt}});
    text = engine.apply_chat_template(messages, true);
  }
  GenerateRequest req;
  // A chat template writes its own BOS; a raw prompt gets the tokenizer's special tokens.
  req.prompt = engine.tokenizer().encode(text, !a.chat);
  req.sampling = a.sampling;
  if (a.seed >= 0) req.sampling.seed = static_cast<uint64_t>(a.seed);
  req.sampling.logprobs = a.sampling.top_logprobs > 0;
  req.stop = a.stop;
  const Tokenizer& tok = engine.tokenizer();
  const bool json_lines = a.sampling.top_logprobs > 0;
  // Plain: the text as it comes, then a newline. With --logprobs: JSON lines only, one per token
  // and a last one with the whole text, so that the output can be read by a program.
  GenerateResult r = engine.generate(req, [&](const TokenEvent& e) {
    if (!json_lines) {
      std::fwrite(e.text.data(), 1, e.text.size(), stdout);
    } else if (e.token >= 0) {
      nlohmann::json alts = nlohmann::json::array();
      for (const auto& t : e.sample.top) alts.push_back({{"token", tok.id_to_token(t.id)}, {"logprob", t.logprob}});
      const nlohmann::json line = {{"token", tok.id_to_token(e.token)}, {"id", e.token}, {"text", e.text},
                                   {"logprob", e.sample.logprob}, {"top", alts}};
      std::fputs((line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n").c_str(), stdout);
    }
    std::fflush(stdout);
  });
  if (json_lines) {
    const nlohmann::json last = {{"text", r.text}, {"finish_reason", finish_reason_name(r.finish)},
                                 {"prompt_tokens", r.prompt_tokens}, {"completion_tokens", r.tokens.size()}};
    std::fputs(last.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str(), stdout);
  }
  std::fputs("\n", stdout);
  std::fflush(stdout);  // before the log line on stderr, which a terminal shows in the same place
  spdlog::info("finish_reason={} prompt_tokens={} completion_tokens={}", finish_reason_name(r.finish), r.prompt_tokens,
               r.tokens.size());
  return 0;
}

}  // namespace

int run_cli(int argc, char** argv) {
  auto logger = spdlog::stderr_color_mt("stemserve");
  spdlog::set_default_logger(logger);
  CLI::App app{"stemserve: a Llama-family inference server with Stem sparse prefill"};
  app.require_subcommand(1);
  app.fallthrough();  // global flags (--log-level) may follow the subcommand
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->envname("STEMSERVE_LOG_LEVEL");

  GenerateArgs gen;
  CLI::App* g = app.add_subcommand("generate", "Generate a completion for one prompt and stream it to stdout");
  g->add_option("--model", gen.model, "Hugging Face model folder (config.json, model.safetensors, tokenizer)")
      ->required()->envname("STEMSERVE_MODEL");
  g->add_option("--prompt", gen.prompt, "The prompt text")->required();
  g->add_flag("--chat", gen.chat, "Wrap the prompt as a user message in the model's chat template");
  g->add_option("--system", gen.system, "System message (with --chat)");
  g->add_option("--max-model-len", gen.max_model_len, "Context length (default: the model's)")
      ->envname("STEMSERVE_MAX_MODEL_LEN");
  g->add_option("--device", gen.device, "cpu or cuda")->envname("STEMSERVE_DEVICE")->capture_default_str();
  g->add_option("--load-format", gen.load_format, "auto (safetensors) or dummy (random weights for config.json)")
      ->check(CLI::IsMember({"auto", "dummy"}))->envname("STEMSERVE_LOAD_FORMAT")->capture_default_str();
  g->add_option("--gpu-memory-fraction", gen.gpu_memory_fraction, "Share of GPU memory for weights and KV cache")
      ->check(CLI::Range(0.05, 0.99))->envname("STEMSERVE_GPU_MEMORY_FRACTION")->capture_default_str();
  add_sampling_flags(g, gen);
  add_prefill_flags(g, gen.sparse_prefill, gen.stem);

  ServeArgs serve;
  CLI::App* s = add_serve_command(app, serve);
  add_prefill_flags(s, serve.sparse_prefill, serve.stem);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  spdlog::set_level(spdlog::level::from_str(log_level));
  try {
    if (app.got_subcommand(g)) return run_generate(gen);
    if (app.got_subcommand(s)) return run_serve(serve);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  return 0;
}

}  // namespace stem
