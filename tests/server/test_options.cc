// The command line parsed once into the options each layer reads (server/options.h): every flag
// lands in its struct, the defaults that depend on other flags are set at parse time, and the
// serve command's security defaults hold (loopback unless told otherwise; the key and the caps
// settable by flag or STEMSERVE_* variable).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdlib>

#include "server/options.h"
#include "tests/test_util.h"

using namespace stem;

namespace {

// Parses `argv` (without the program's name) into a fresh `Options` with `add`'s subcommand.
template <typename Options, typename Add>
Options parse(const char* command, Add add, std::vector<std::string> argv) {
  CLI::App app;
  Options options;
  add(app, options);
  argv.insert(argv.begin(), command);
  std::reverse(argv.begin(), argv.end());  // CLI11 takes a reversed vector
  app.parse(argv);
  return options;
}

ServeOptions parse_serve(std::vector<std::string> argv) {
  return parse<ServeOptions>("serve", add_serve_command, std::move(argv));
}

GenerateOptions parse_generate(std::vector<std::string> argv) {
  return parse<GenerateOptions>("generate", add_generate_command, std::move(argv));
}

}  // namespace

TEST_CASE("serve listens on 127.0.0.1 unless told otherwise") {
  ::unsetenv("STEMSERVE_HOST");
  ServeOptions a = parse_serve({"--model", "m"});
  CHECK(a.api.host == "127.0.0.1");
  CHECK(a.api.api_key.empty());
  CHECK(parse_serve({"--model", "m", "--host", "0.0.0.0"}).api.host == "0.0.0.0");
  ::setenv("STEMSERVE_HOST", "::1", 1);
  CHECK(parse_serve({"--model", "m"}).api.host == "::1");
  ::unsetenv("STEMSERVE_HOST");
}

TEST_CASE("the API key and the request caps come from flags or STEMSERVE_* variables") {
  ServeOptions d = parse_serve({"--model", "m"});
  CHECK(d.api.max_request_bytes == 8 << 20);
  ::setenv("STEMSERVE_API_KEY", "from-env", 1);
  ::setenv("STEMSERVE_MAX_REQUEST_BYTES", "1234", 1);
  ::setenv("STEMSERVE_MAX_MODEL_LEN", "256", 1);
  ::setenv("STEMSERVE_MAX_NUM_SEQS", "3", 1);
  ServeOptions a = parse_serve({"--model", "m"});
  CHECK(a.api.api_key == "from-env");
  CHECK(a.api.max_request_bytes == 1234);  // body size: 413
  CHECK(a.engine.max_model_len == 256);       // prompt + max_tokens: 400
  CHECK(a.engine.max_num_seqs == 3);          // n: 400
  ::unsetenv("STEMSERVE_API_KEY");
  ::unsetenv("STEMSERVE_MAX_REQUEST_BYTES");
  ::unsetenv("STEMSERVE_MAX_MODEL_LEN");
  ::unsetenv("STEMSERVE_MAX_NUM_SEQS");
  CHECK_THROWS(parse_serve({"--model", "m", "--max-request-bytes", "0"}));
}

TEST_CASE("serve flags land in the engine's and the servers' options") {
  const ServeOptions o = parse_serve({"--model", "m", "--max-num-seqs", "3", "--max-num-batched-tokens", "256",
                                      "--kv-cache-tokens", "4096", "--load-format", "dummy", "--device", "cuda",
                                      "--gpu-memory-fraction", "0.5", "--sparse-prefill", "dense", "--stem-alpha",
                                      "0.25", "--stem-min-prompt-len", "2048", "--port", "0", "--grpc-port", "-1",
                                      "--served-model-name", "smol", "--max-queue", "7", "--shutdown-timeout", "2.5"});
  CHECK(o.model == "m");
  CHECK(o.engine.max_num_seqs == 3);
  CHECK(o.engine.max_num_batched_tokens == 256);
  CHECK(o.engine.kv_cache_tokens == 4096);
  CHECK(o.engine.dummy_weights);
  CHECK(o.engine.load_tokenizer);
  CHECK(o.engine.device == "cuda");
  CHECK(o.engine.gpu_memory_fraction == 0.5);
  CHECK(o.engine.sparse_prefill == SparsePrefill::Dense);
  CHECK(o.engine.stem.alpha == 0.25);
  CHECK(o.engine.stem.min_prompt_len == 2048);
  CHECK(o.api.port == 0);
  CHECK(o.api.grpc_port == -1);
  CHECK(o.api.served_model_name == "smol");
  CHECK(o.max_queue == 7);
  CHECK(o.shutdown_timeout == 2.5);
  CHECK(o.api.http_threads == 3 + 7 + 16);  // its default follows --max-num-seqs and --max-queue
  CHECK(parse_serve({"--model", "m", "--http-threads", "5"}).api.http_threads == 5);

  const ServeOptions d = parse_serve({"--model", "m"});  // the defaults are EngineOptions' own
  const EngineOptions e;
  CHECK_FALSE(d.engine.dummy_weights);
  CHECK(d.engine.sparse_prefill == e.sparse_prefill);
  CHECK(d.engine.max_num_seqs == e.max_num_seqs);
  CHECK(d.engine.device == e.device);
  CHECK(d.api.grpc_port == 50051);
  CHECK_THROWS(parse_serve({"--model", "m", "--sparse-prefill", "sparse"}));
  CHECK_THROWS(parse_serve({"--model", "m", "--load-format", "gguf"}));
}

TEST_CASE("generate flags land in the request's and the engine's options") {
  const GenerateOptions g = parse_generate({"--model", "/nonexistent/m", "--prompt", "hi", "--chat", "--temperature",
                                            "0", "--top-k", "5", "--max-tokens", "9", "--stop", "END", "--seed", "3",
                                            "--logprobs", "2", "--max-model-len", "512", "--load-format", "dummy",
                                            "--sparse-prefill", "dense"});
  CHECK(g.prompt == "hi");
  CHECK(g.chat);
  CHECK(g.sampling.temperature == 0.0f);
  CHECK(g.sampling.top_k == 5);
  CHECK(g.sampling.top_logprobs == 2);
  CHECK(g.stop.max_tokens == 9);
  CHECK(g.stop.stop == std::vector<std::string>{"END"});
  CHECK(g.seed == 3);
  CHECK(g.engine.max_model_len == 512);
  CHECK(g.engine.dummy_weights);
  CHECK_FALSE(g.engine.load_tokenizer);  // random weights and no tokenizer.json beside them
  CHECK(g.engine.sparse_prefill == SparsePrefill::Dense);
  CHECK(parse_generate({"--model", "/nonexistent/m", "--prompt", "hi"}).engine.load_tokenizer);
}

TEST_CASE("the Stem selector, threshold and schedule flags, checked as the engine checks them") {
  const ServeOptions d = parse_serve({"--model", "m"});
  const StemSettings e = stem_served_settings();  // the served defaults: the threshold selector
  CHECK(d.engine.stem.selector == StemSelector::Threshold);
  CHECK(d.engine.stem.threshold == e.threshold);
  CHECK(d.engine.stem.causal == e.causal);
  CHECK(e.threshold == kStemServedThreshold);
  CHECK(e.lambda == StemSettings{}.lambda);  // the value bonus kept
  CHECK(stem_selection_causal(e));
  check_stem_settings(e);
  CHECK(parse_generate({"--model", "m", "--prompt", "hi"}).engine.stem.selector == StemSelector::Threshold);
  // The paper's method, chosen by flag.
  const ServeOptions paper = parse_serve({"--model", "m", "--stem-selector", "topk"});
  CHECK(paper.engine.stem.selector == StemSelector::TopK);
  CHECK_FALSE(stem_selection_causal(paper.engine.stem));
  const ServeOptions o = parse_serve({"--model", "m", "--stem-selector", "threshold", "--stem-threshold", "0.75",
                                      "--stem-schedule", "causal"});
  CHECK(o.engine.stem.selector == StemSelector::Threshold);
  CHECK(o.engine.stem.threshold == 0.75);
  CHECK(o.engine.stem.causal);
  CHECK_FALSE(parse_serve({"--model", "m", "--stem-schedule", "paper"}).engine.stem.causal);
  ::setenv("STEMSERVE_STEM_SELECTOR", "adaptive", 1);
  const GenerateOptions g = parse_generate({"--model", "m", "--prompt", "hi", "--stem-schedule", "causal"});
  ::unsetenv("STEMSERVE_STEM_SELECTOR");
  CHECK(g.engine.stem.selector == StemSelector::Adaptive);
  CHECK(g.engine.stem.causal);
  CHECK(parse_generate({"--model", "m", "--prompt", "hi", "--stem-selector", "none"}).engine.stem.selector ==
        StemSelector::None);

  CHECK_THROWS_AS(parse_serve({"--model", "m", "--stem-selector", "top-k"}), CLI::ValidationError);
  CHECK_THROWS_AS(parse_serve({"--model", "m", "--stem-schedule", "linear"}), CLI::ValidationError);
  // What only the settings' check knows, with its message (not the check's file and line).
  CHECK_THROWS_WITH(parse_serve({"--model", "m", "--stem-threshold", "0"}),
                    Catch::Matchers::StartsWith("Stem: the threshold (softmax mass to keep) must be in (0, 1], got 0"));
  CHECK_THROWS_WITH(parse_generate({"--model", "m", "--prompt", "hi", "--stem-threshold", "1.5"}),
                    Catch::Matchers::StartsWith("Stem: the threshold (softmax mass to keep) must be in (0, 1], got 1.5"));
  CHECK_THROWS_WITH(parse_serve({"--model", "m", "--stem-stride", "7"}),
                    Catch::Matchers::StartsWith("Stem: the stride (7) must divide the block size (128)"));
}

TEST_CASE("quantization: --quantization fp8 lands in the engine's options, on serve and generate, and nothing else is taken") {
  CHECK(parse_serve({"--model", "m", "--quantization", "fp8"}).engine.quantization == "fp8");
  CHECK(parse_generate({"--model", "m", "--prompt", "p", "--quantization", "fp8"}).engine.quantization == "fp8");
  CHECK(parse_serve({"--model", "m"}).engine.quantization.empty());
  CHECK_THROWS(parse_serve({"--model", "m", "--quantization", "int8"}));
}

TEST_CASE("kv cache dtype: --kv-cache-dtype auto|bf16|fp8 lands in the engine's options, on serve and generate") {
  CHECK(parse_serve({"--model", "m"}).engine.kv_cache_dtype == "auto");
  for (const char* d : {"auto", "bf16", "fp8"})
    CHECK(parse_serve({"--model", "m", "--kv-cache-dtype", d}).engine.kv_cache_dtype == d);
  CHECK(parse_generate({"--model", "m", "--prompt", "p", "--kv-cache-dtype", "fp8"}).engine.kv_cache_dtype == "fp8");
  CHECK(parse_serve({"--model", "m", "--kv-cache-dtype", "fp8"}).engine.quantization.empty());  // independent flags
  CHECK_THROWS(parse_serve({"--model", "m", "--kv-cache-dtype", "fp8_e5m2"}));
  CHECK_THROWS(parse_serve({"--model", "m", "--kv-cache-dtype", "int8"}));
}

TEST_CASE("the tool-call parser (--tool-call-parser) names one of the served formats") {
  CHECK(parse_serve({"--model", "m"}).api.tool_call_parser.empty());  // from the chat template
  for (const char* f : {"hermes", "llama3_json", "mistral"})
    CHECK(parse_serve({"--model", "m", "--tool-call-parser", f}).api.tool_call_parser == f);
  CHECK_THROWS(parse_serve({"--model", "m", "--tool-call-parser", "pythonic"}));
}
