// The OpenAI-compatible HTTP API (cpp-httplib): /v1/completions, /v1/chat/completions (JSON or
// SSE), /v1/models, /tokenize, /detokenize, /health, /metrics; Bearer auth; OpenAI-style errors.
// The server starts before the model is loaded (GET /health answers 503 until attach()).
#pragma once
#include <cstddef>
#include <memory>
#include <string>

namespace stem {

class Engine;
class EngineLoop;
class ServerMetrics;

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 8000;                      // 0: any free port (port() tells which)
  std::string api_key;                  // empty: no auth
  size_t max_body_bytes = 8u << 20;     // larger bodies get 413
  int threads = 64;                     // connections served at once (a stream holds one)
  std::string served_model_name;        // empty: the model folder's name
};

class HttpServer {
 public:
  explicit HttpServer(const HttpOptions& options);
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
