// `stemserve serve`: loads the model, runs the engine loop, the HTTP API and the gRPC API until
// SIGTERM/SIGINT.
#pragma once
#include <cstdint>
#include <string>

#include "engine/request.h"
#include "kernels/cpu/stem.h"

namespace CLI {
class App;
}

namespace stem {

struct ServeArgs {
  std::string model;
  std::string served_model_name;
  std::string host = "127.0.0.1";
  int port = 8000;
  int grpc_port = 50051;  // -1: no gRPC server
  std::string api_key;
  int64_t max_queue = 256;
  int64_t max_num_batched_tokens = 0;  // 0: the device's default (engine.h)
  int64_t max_num_seqs = 64;
  int64_t max_model_len = 0;
  int64_t kv_cache_tokens = 0;
  int64_t max_request_bytes = 8 << 20;
  int http_threads = 0;
  double shutdown_timeout = 30;
  std::string device = "cpu";
  std::string load_format = "auto";
  double gpu_memory_fraction = 0.9;
  bool enable_prefix_caching = true;
  // Stem sparse prefill (its flags are wired in server/cli.cc, shared with generate).
  SparsePrefill sparse_prefill = SparsePrefill::Stem;
  StemSettings stem;
};

// Adds the `serve` subcommand with its flags (each also read from a STEMSERVE_* variable).
CLI::App* add_serve_command(CLI::App& app, ServeArgs& args);
// Runs the server; returns the process exit code.
int run_serve(const ServeArgs& args);

}  // namespace stem
