#include "server/serve.h"

#include <spdlog/spdlog.h>

#include <sys/syscall.h>
#include <unistd.h>

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

int run_serve(const ServeOptions& o) {
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

  const ApiOptions& api = o.api;
  HttpServer server(api);
  server.start();
  spdlog::info("listening on http://{}:{} (loading the model; /health answers 503 until it is ready)", api.host,
               server.port());
  std::unique_ptr<GrpcServer> grpc;
  if (api.grpc_port >= 0) {
    grpc = std::make_unique<GrpcServer>(api);
    grpc->start();
    spdlog::info("gRPC listening on {}:{} (health NOT_SERVING until the model is ready)", api.host, grpc->port());
  }

  Engine engine(o.model, o.engine);
  ServerMetrics metrics;
  EngineLoop loop(engine, o.max_queue);
  loop.set_step_observer([&metrics](const StepStats& s) { metrics.observe_step(s); });
  server.attach(engine, loop, metrics);
  if (grpc) grpc->attach(engine, loop, metrics);
  spdlog::info("ready: http://{}:{}/v1 serves '{}' (max_model_len {}, KV cache {} tokens, max_num_seqs {})", api.host,
               server.port(), std::filesystem::path(o.model).filename().string(), engine.max_model_len(),
               engine.kv_capacity_tokens(), o.engine.max_num_seqs);
  if (grpc) spdlog::info("ready: gRPC stemserve.v1.Stemserve on {}:{}", api.host, grpc->port());

  int sig = 0;
  sigwait(&stop_signals, &sig);
  spdlog::info("{}: no longer accepting connections; {} sequences in flight get {} s to finish",
               sig == SIGTERM ? "SIGTERM" : "SIGINT", loop.in_flight(), o.shutdown_timeout);
  server.stop_accepting();
  if (grpc) grpc->begin_drain();
  const int64_t aborted =
      loop.drain(std::chrono::milliseconds(static_cast<int64_t>(o.shutdown_timeout * 1000)));
  if (aborted) spdlog::warn("ended {} unfinished sequences with an error", aborted);
  // Every sequence has ended: the streams only have their last messages to write.
  if (grpc) grpc->shutdown(std::chrono::seconds(5));
  server.join();
  spdlog::info("stopped");
  return 0;
}

}  // namespace stem
