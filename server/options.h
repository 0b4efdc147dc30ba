// The command line's options, parsed once by CLI11 straight into one struct per concern, which
// each layer reads by const reference: EngineOptions (engine/engine.h) for the model and the
// engine, ApiOptions for the HTTP and gRPC front ends, and the command's own struct around them.
// Every flag can also be set through its STEMSERVE_* environment variable.
#pragma once
#include <cstdint>
#include <string>

#include "engine/engine.h"

namespace CLI {
class App;
}

namespace stem {

// What the HTTP and gRPC servers read.
// The Stem settings stemserve serves by default, where StemSettings{} is the paper's method (the
// reference the tests check the kernels against): Stem's estimate and value bonus with the
// threshold selector at 0.8738 of the softmax mass. Calibrated to 25% of the causal blocks at 32K
// on Qwen2.5-Coder-1.5B-Instruct, it scored 55.5 on the RULER-style average against the paper
// schedule's 41.6 (dense 59.1; 300 answers each) with 58.8 against 68.8 ms of attention on the
// H100 (bench/RESULTS.md, "Long-context accuracy"); its selection is causal, so prefix caching
// shares Stem's pages.
constexpr double kStemServedThreshold = 0.8738;
StemSettings stem_served_settings();

struct ApiOptions {
  std::string host = "127.0.0.1";
  int port = 8000;          // HTTP; 0: any free port (the server logs which)
  int grpc_port = 50051;    // 0: any free port; -1: no gRPC server
  std::string api_key;      // empty: no auth
  std::string served_model_name;        // empty: the model folder's name
  int64_t max_request_bytes = 8 << 20;  // larger HTTP bodies get 413, gRPC messages RESOURCE_EXHAUSTED
  std::string tool_call_parser;         // hermes, llama3_json or mistral; empty: from the chat template
  int http_threads = 0;     // connections served at once (a stream holds one); 0: the serve
                            // command sets max-num-seqs + max-queue + 16 once its flags are read
};

// `stemserve serve`.
struct ServeOptions {
  std::string model;  // the model folder
  EngineOptions engine;
  ApiOptions api;
  int64_t max_queue = 256;        // sequences that may wait beyond max_num_seqs (EngineLoop)
  double shutdown_timeout = 30;   // seconds in-flight requests get after SIGTERM/SIGINT
};

// `stemserve generate`.
struct GenerateOptions {
  std::string model;
  EngineOptions engine;
  std::string prompt;
  bool chat = false;
  std::string system;
  SamplingParams sampling;  // sampling.top_logprobs > 0: JSON lines with logprobs
  StopConditions stop;
  int64_t seed = -1;        // -1: random
};

// The subcommands with their flags, parsed into `options` by app.parse().
CLI::App* add_serve_command(CLI::App& app, ServeOptions& options);
CLI::App* add_generate_command(CLI::App& app, GenerateOptions& options);

}  // namespace stem
