// The gRPC API (proto/stemserve/v1/stemserve.proto): Generate (server streaming), Tokenize,
// Detokenize and ModelInfo, beside the standard grpc.health.v1 service and server reflection
// (grpc.reflection.v1, server/grpc_reflection_v1.h, and gRPC's own grpc.reflection.v1alpha).
// It shares the HTTP API's engine loop, API key, queue limit and shutdown. Like the HTTP server
// it starts before the model is loaded: health answers NOT_SERVING and calls UNAVAILABLE until
// attach().
#pragma once
#include <chrono>
#include <memory>

#include "server/options.h"

namespace stem {

class EngineLoop;
class ServerMetrics;

class GrpcServer {
 public:
  // Reads host, grpc_port (0: any free port; port() tells which), api_key, max_request_bytes
  // (larger messages get RESOURCE_EXHAUSTED from gRPC itself) and served_model_name.
  explicit GrpcServer(const ApiOptions& options);
  ~GrpcServer();  // shuts down at once if shutdown() was not called

  // Binds and serves on gRPC's own threads; throws stem::Error if the address cannot be bound.
  void start();
  int port() const;
  // The model is loaded: calls are served and health turns SERVING. The objects must outlive
  // the server (or at least its shutdown()).
  void attach(const Engine& engine, EngineLoop& loop, ServerMetrics& metrics);
  // Shutdown begins: health turns NOT_SERVING for good, new calls get UNAVAILABLE; calls in
  // flight go on.
  void begin_drain();
  // Stops the server: waits up to `grace` for the calls in flight (their sequences should have
  // been drained from the engine loop first), then cancels the rest.
  void shutdown(std::chrono::milliseconds grace);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stem
