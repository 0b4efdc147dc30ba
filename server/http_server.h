// The OpenAI-compatible HTTP API (cpp-httplib): /v1/completions, /v1/chat/completions (JSON or
// SSE), /v1/models, /tokenize, /detokenize, /health, /metrics; Bearer auth; OpenAI-style errors.
// The server starts before the model is loaded (GET /health answers 503 until attach()).
#pragma once
#include <memory>

#include "server/options.h"

namespace stem {

class EngineLoop;
class ServerMetrics;

class HttpServer {
 public:
  // Reads host, port (0: any free port; port() tells which), api_key, max_request_bytes,
  // http_threads (0: 64) and served_model_name.
  explicit HttpServer(const ApiOptions& options);
  ~HttpServer();

  // Binds (throws stem::Error if the address is taken) and serves on its own thread.
  void start();
  int port() const;
  // The model is loaded: generation endpoints open. The objects must outlive the server.
  void attach(const Engine& engine, EngineLoop& loop, ServerMetrics& metrics);
  // Closes the listening socket: no new connections; requests in flight go on.
  void stop_accepting();
  // Waits for the serving thread, which ends once the handlers in flight have returned.
  void join();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stem
