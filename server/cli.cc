#include "server/cli.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "engine/engine.h"
#include "text/tokenizer.h"
#include "server/options.h"
#include "server/serve.h"

namespace stem {

namespace {

int run_generate(const GenerateOptions& a) {
  Engine engine(a.model, a.engine);
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

  GenerateOptions gen;
  CLI::App* g = add_generate_command(app, gen);
  ServeOptions serve;
  CLI::App* s = add_serve_command(app, serve);

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
