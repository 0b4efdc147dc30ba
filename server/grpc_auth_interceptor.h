// The API key on gRPC calls that our service does not handle itself: server reflection, every
// method under "/grpc.reflection." (v1 and v1alpha). (The Stemserve methods check the key in
// admit(); grpc.health.v1 stays open, as GET /health does.)
#pragma once
#include <grpcpp/support/server_interceptor.h>

#include <memory>
#include <string>

namespace stem {

// Interceptors that end reflection calls without "authorization: Bearer <key>" (CANCELLED, the
// reason in the log) before the reflection service answers. `expected_auth` empty: no interceptor is needed (returns null).
std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> make_reflection_auth(std::string expected_auth);

}  // namespace stem
