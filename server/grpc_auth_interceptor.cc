#include "server/grpc_auth_interceptor.h"

#include <grpcpp/server_context.h>
#include <spdlog/spdlog.h>

#include <cstring>

#include "server/auth.h"

namespace stem {

namespace {

using grpc::experimental::InterceptionHookPoints;

bool is_reflection(const char* method) {
  return method && std::strncmp(method, "/grpc.reflection.", std::strlen("/grpc.reflection.")) == 0;
}

// Sees the call's metadata before the reflection service reads its first request; without the
// key the call is cancelled there, before any answer is written. The client sees CANCELLED:
// gRPC 1.51's server interceptors cannot end a call with a status of their own (a status set at
// PRE_SEND_STATUS is not sent once the call is cancelled), so the reason goes to the log.
class ReflectionAuth final : public grpc::experimental::Interceptor {
 public:
  ReflectionAuth(grpc::experimental::ServerRpcInfo* info, const std::string& expected)
      : info_(info), expected_(expected) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* m) override {
    if (m->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      const auto* md = m->GetRecvInitialMetadata();
      auto it = md ? md->find("authorization") : decltype(md->end()){};
      const std::string_view given =
          md && it != md->end() ? std::string_view(it->second.data(), it->second.size()) : std::string_view();
      if (!constant_time_equal(given, expected_)) {
        spdlog::info("gRPC {} from {}: refused, no valid API key (send the metadata 'authorization: Bearer <key>')",
                     info_->method(), info_->server_context()->peer());
        info_->server_context()->TryCancel();
      }
    }
    m->Proceed();
  }

 private:
  grpc::experimental::ServerRpcInfo* info_;
  const std::string& expected_;
};

class ReflectionAuthFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit ReflectionAuthFactory(std::string expected) : expected_(std::move(expected)) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return is_reflection(info->method()) ? new ReflectionAuth(info, expected_) : nullptr;
  }

 private:
  std::string expected_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> make_reflection_auth(std::string expected_auth) {
  if (expected_auth.empty()) return nullptr;
  return std::make_unique<ReflectionAuthFactory>(std::move(expected_auth));
}

}  // namespace stem
