#include "server/serve.h"

#include <spdlog/spdlog.h>

#include <sys/syscall.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <memory>

#include "engine/engine_loop.h"
#include "server/grpc_server.h"
#include "server/http_server.h"
#include "server/metrics.h"

namespace stem {
namespace {

// The thread that takes SIGTERM/SIGINT with sigwait() (run_serve's), by its kernel thread id.
pid_t g_signal_thread = 0;

// Runs in a thread that does not block the stop signals: one some library started before main
// (OpenBLAS starts its workers when it is loaded), which therefore did not inherit run_serve's
// mask. The kernel hands a process-wide signal to such a thread whenever the waiting thread is not
// inside sigwait() yet (it blocks the signal until then, e.g. while the model loads), and without
// a handler that would end the process at once. Re-send it to the waiting thread instead: it stays
// pending there until sigwait() takes it. (tgkill is a plain system call: safe in a handler.)
void forward_stop_signal(int sig) { syscall(SYS_tgkill, getpid(), g_signal_thread, sig); }

}  // namespace

CLI::App* add_serve_command(CLI::App& app, ServeArgs& a) {
  CLI::App* s = app.add_subcommand("serve", "Serve the model over an OpenAI-compatible HTTP API and gRPC");
  s->add_option("--model", a.model, "Hugging Face model folder (config.json, model.safetensors, tokenizer)")
      ->required()->envname("STEMSERVE_MODEL");
  s->add_option("--served-model-name", a.served_model_name, "The model's name in the API (default: the folder's name)")
      ->envname("STEMSERVE_SERVED_MODEL_NAME");
  s->add_option("--host", a.host, "Address to listen on")->envname("STEMSERVE_HOST")->capture_default_str();
  s->add_option("--port", a.port, "HTTP port (0: any free port, logged at start)")
      ->check(CLI::Range(0, 65535))->envname("STEMSERVE_PORT")->capture_default_str();
  s->add_option("--grpc-port", a.grpc_port, "gRPC port (0: any free port, logged at start; -1: no gRPC server)")
      ->check(CLI::Range(-1, 65535))->envname("STEMSERVE_GRPC_PORT")->capture_default_str();
  s->add_option("--api-key", a.api_key,
                "Require 'Authorization: Bearer <key>' on every endpoint but /health (gRPC: the metadata, "
                "except for health and reflection)")
      ->envname("STEMSERVE_API_KEY");
  s->add_option("--max-queue", a.max_queue, "Sequences that may wait beyond --max-num-seqs; more get 429")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_MAX_QUEUE")->capture_default_str();
  s->add_option("--max-num-batched-tokens", a.max_num_batched_tokens,
                "Tokens per engine step (decode + prefill chunks); 0: 8192 on cuda, 512 on cpu")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_MAX_NUM_BATCHED_TOKENS")->capture_default_str();
  s->add_option("--max-num-seqs", a.max_num_seqs, "Sequences in the running batch")
      ->check(CLI::PositiveNumber)->envname("STEMSERVE_MAX_NUM_SEQS")->capture_default_str();
  s->add_option("--max-model-len", a.max_model_len, "Context length (default: the model's)")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_MAX_MODEL_LEN");
  s->add_option("--kv-cache-tokens", a.kv_cache_tokens,
                "KV-cache size in tokens (default: cpu, one max-model-len sequence; cuda, what memory allows)")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_KV_CACHE_TOKENS");
  s->add_option("--max-request-bytes", a.max_request_bytes, "Largest request body; larger ones get 413")
      ->check(CLI::PositiveNumber)->envname("STEMSERVE_MAX_REQUEST_BYTES")->capture_default_str();
  s->add_option("--http-threads", a.http_threads, "Connections served at once (default: max-num-seqs + max-queue + 16)")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_HTTP_THREADS");
  s->add_option("--shutdown-timeout", a.shutdown_timeout,
                "Seconds in-flight requests get to finish after SIGTERM/SIGINT before they are ended with an error")
      ->check(CLI::NonNegativeNumber)->envname("STEMSERVE_SHUTDOWN_TIMEOUT")->capture_default_str();
  s->add_option("--device", a.device, "cpu or cuda")->envname("STEMSERVE_DEVICE")->capture_default_str();
  s->add_option("--load-format", a.load_format, "auto (safetensors) or dummy (random weights for config.json)")
      ->check(CLI::IsMember({"auto", "dummy"}))->envname("STEMSERVE_LOAD_FORMAT")->capture_default_str();
  s->add_option("--gpu-memory-fraction", a.gpu_memory_fraction, "Share of GPU memory for weights and KV cache")
      ->check(CLI::Range(0.05, 0.99))->envname("STEMSERVE_GPU_MEMORY_FRACTION")->capture_default_str();
  s->add_flag("--enable-prefix-caching,!--no-enable-prefix-caching", a.enable_prefix_caching,
              "Keep the KV pages of computed prompts and reuse them for later prompts with the same prefix (on by "
              "default; docs/prefix_caching.md)")
      ->envname("STEMSERVE_ENABLE_PREFIX_CACHING");
  return s;
}

int run_serve(const ServeArgs& a) {
  // Signals are taken by sigwait() below: block them before any of our threads starts, so every
  // thread we start inherits the mask, and forward them from threads started before (see
  // forward_stop_signal). A client that hangs up must not kill the process.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  g_signal_thread = static_cast<pid_t>(syscall(SYS_gettid));
  struct sigaction forward {};
  forward.sa_handler = forward_stop_signal;
  sigemptyset(&forward.sa_mask);
  forward.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &forward, nullptr);
  sigaction(SIGINT, &forward, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  HttpOptions http;
  http.host = a.host;
  http.port = a.port;
  http.api_key = a.api_key;
  http.max_body_bytes = static_cast<size_t>(a.max_request_bytes);
  http.served_model_name = a.served_model_name;
  http.threads = a.http_threads > 0 ? a.http_threads
                                    : static_cast<int>(std::min<int64_t>(a.max_num_seqs + a.max_queue + 16, 1024));
  HttpServer server(http);
  server.start();
  spdlog::info("listening on http://{}:{} (loading the model; /health answers 503 until it is ready)", a.host,
               server.port());
  std::unique_ptr<GrpcServer> grpc;
  if (a.grpc_port >= 0) {
    GrpcOptions g;
    g.host = a.host;
    g.port = a.grpc_port;
    g.api_key = a.api_key;
    g.max_message_bytes = static_cast<size_t>(a.max_request_bytes);
    g.served_model_name = a.served_model_name;
    grpc = std::make_unique<GrpcServer>(g);
    grpc->start();
    spdlog::info("gRPC listening on {}:{} (health NOT_SERVING until the model is ready)", a.host, grpc->port());
  }

  EngineOptions opts;
  opts.device = a.device;
  opts.dummy_weights = a.load_format == "dummy";
  opts.load_tokenizer = true;
  opts.gpu_memory_fraction = a.gpu_memory_fraction;
  opts.max_model_len = a.max_model_len;
  opts.kv_cache_tokens = a.kv_cache_tokens;
  opts.max_num_batched_tokens = a.max_num_batched_tokens;
  opts.max_num_seqs = a.max_num_seqs;
  opts.sparse_prefill = a.sparse_prefill;
  opts.stem = a.stem;
  opts.enable_prefix_caching = a.enable_prefix_caching;
  Engine engine(a.model, opts);
  ServerMetrics metrics;
  EngineLoop loop(engine, a.max_queue);
  loop.set_step_observer([&metrics](const StepStats& s) { metrics.observe_step(s); });
  server.attach(engine, loop, metrics);
  if (grpc) grpc->attach(engine, loop, metrics);
  spdlog::info("ready: http://{}:{}/v1 serves '{}' (max_model_len {}, KV cache {} tokens, max_num_seqs {})", a.host,
               server.port(), std::filesystem::path(a.model).filename().string(), engine.max_model_len(),
               engine.kv_capacity_tokens(), a.max_num_seqs);
  if (grpc) spdlog::info("ready: gRPC stemserve.v1.Stemserve on {}:{}", a.host, grpc->port());

  int sig = 0;
  sigwait(&stop_signals, &sig);
  spdlog::info("{}: no longer accepting connections; {} sequences in flight get {} s to finish",
               sig == SIGTERM ? "SIGTERM" : "SIGINT", loop.in_flight(), a.shutdown_timeout);
  server.stop_accepting();
  if (grpc) grpc->begin_drain();
  const int64_t aborted =
      loop.drain(std::chrono::milliseconds(static_cast<int64_t>(a.shutdown_timeout * 1000)));
  if (aborted) spdlog::warn("ended {} unfinished sequences with an error", aborted);
  // Every sequence has ended: the streams only have their last messages to write.
  if (grpc) grpc->shutdown(std::chrono::seconds(5));
  server.join();
  spdlog::info("stopped");
  return 0;
}

}  // namespace stem
