// What the gRPC handlers share (private to server/grpc_*.cc): the served model, the engine loop,
// metrics, readiness, and the status a call gets when it may not go on.
#pragma once
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <string>

#include "engine/engine_loop.h"
#include "server/api_error.h"
#include "server/metrics.h"
#include "server/api_request.h"

namespace stem {

struct GrpcContext {
  std::atomic<bool> ready{false};     // the model is loaded
  std::atomic<bool> draining{false};  // shutdown has begun
  std::string expected_auth;          // "Bearer <key>", empty when there is no API key
  EngineLoop* loop = nullptr;
  ServerMetrics* metrics = nullptr;
  ServedModel model;
};

// OK when the call may go on: the API key (when set) is right, the model is loaded, the server
// is not shutting down. Otherwise UNAUTHENTICATED or UNAVAILABLE with the reason.
grpc::Status admit(const GrpcContext& ctx, const grpc::CallbackServerContext* call);

// The gRPC code for an API error: 400 INVALID_ARGUMENT, 401 UNAUTHENTICATED, 404 NOT_FOUND,
// 413/429 RESOURCE_EXHAUSTED, 503 UNAVAILABLE, the rest INTERNAL. The message starts with the
// field's name as the proto calls it ("max_tokens: ...", "'text' must not be empty").
grpc::Status status_of(const ApiError& error);

// Generate: validates, submits to the engine loop and streams the events back; a client's
// cancellation or deadline sets the request's cancellation flag.
grpc::ServerWriteReactor<grpc::ByteBuffer>* start_generate(GrpcContext& ctx, grpc::CallbackServerContext* call,
                                                           const grpc::ByteBuffer* request);

// The wire bytes of a request, parsed. A message that does not parse (a string field that is
// not valid UTF-8, a truncated message) is the client's fault: INVALID_ARGUMENT.
template <typename Message>
grpc::Status parse_message(const grpc::ByteBuffer* buffer, Message& message) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (buffer && buffer->Dump(&slices).ok())
    for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (!message.ParseFromString(bytes))
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "the request is not a valid " + message.GetTypeName() +
                            " (every string field must be valid UTF-8)");
  return grpc::Status::OK;
}

template <typename Message>
grpc::ByteBuffer serialize_message(const Message& message) {
  const std::string bytes = message.SerializeAsString();
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace stem
