#include "server/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <filesystem>

#include "text/tokenizer.h"
#include "server/auth.h"
#include "server/grpc_auth_interceptor.h"
#include "server/grpc_context.h"
#include "server/grpc_convert.h"
#include "server/grpc_reflection_v1.h"
#include "grpc/health/v1/health.pb.h"
#include "stemserve/v1/stemserve.grpc.pb.h"

namespace stem {

namespace v1 = stemserve::v1;

namespace {

// Every method takes and gives raw bytes and parses them itself: a request that does not parse
// (invalid UTF-8 in a string field) is then INVALID_ARGUMENT, where gRPC's own parsing says INTERNAL.
using RawService = v1::Stemserve::WithRawCallbackMethod_Generate<v1::Stemserve::WithRawCallbackMethod_Tokenize<
    v1::Stemserve::WithRawCallbackMethod_Detokenize<v1::Stemserve::WithRawCallbackMethod_ModelInfo<v1::Stemserve::Service>>>>;

class Service final : public RawService {
 public:
  explicit Service(GrpcContext& ctx) : ctx_(ctx) {}

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* call,
                                                       const grpc::ByteBuffer* request) override {
    return start_generate(ctx_, call, request);
  }
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* call, const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override {
    return unary<v1::TokenizeRequest>(call, request, response, [this](const v1::TokenizeRequest& in) {
      v1::TokenizeResponse out;
      for (int32_t id : parse_grpc_tokenize(in, ctx_.model)) out.add_token_ids(id);
      out.set_count(static_cast<uint32_t>(out.token_ids_size()));
      out.set_max_model_len(static_cast<uint32_t>(ctx_.model.engine->max_model_len()));
      return out;
    });
  }
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* call, const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override {
    return unary<v1::DetokenizeRequest>(call, request, response, [this](const v1::DetokenizeRequest& in) {
      v1::DetokenizeResponse out;
      const std::vector<int32_t> ids = parse_grpc_detokenize(in, ctx_.model);
      // A protobuf string must be valid UTF-8: ids that end inside a character decode to U+FFFD.
      const std::string text = ctx_.model.engine->tokenizer().decode(ids, in.skip_special_tokens());
      out.set_text(nlohmann::json::parse(nlohmann::json(text).dump(-1, ' ', false,
                                                                   nlohmann::json::error_handler_t::replace))
                       .get<std::string>());
      return out;
    });
  }
  grpc::ServerUnaryReactor* ModelInfo(grpc::CallbackServerContext* call, const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override {
    return unary<v1::ModelInfoRequest>(call, request, response,
                                       [this](const v1::ModelInfoRequest&) { return model_info(ctx_.model); });
  }

 private:
  // A unary call: admit, parse, run `fn`, answer; errors become their status code.
  template <typename Request, typename Fn>
  grpc::ServerUnaryReactor* unary(grpc::CallbackServerContext* call, const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response, Fn&& fn) {
    grpc::ServerUnaryReactor* reactor = call->DefaultReactor();
    grpc::Status status = admit(ctx_, call);
    Request in;
    if (status.ok()) status = parse_message(request, in);
    if (status.ok()) {
      try {
        *response = serialize_message(fn(in));
      } catch (const ApiError& e) {
        status = status_of(e);
      } catch (const Error& e) {
        status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, e.what());
      } catch (const std::exception& e) {
        spdlog::error("gRPC call failed: {}", e.what());
        status = grpc::Status(grpc::StatusCode::INTERNAL, std::string("internal error: ") + e.what());
      }
    }
    reactor->Finish(status);
    return reactor;
  }

  GrpcContext& ctx_;
};

// The address as gRPC wants it: an IPv6 literal goes in brackets.
std::string listen_address(const std::string& host, int port) {
  const bool ipv6 = host.find(':') != std::string::npos && host.front() != '[';
  return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// The name health checks use for our service, beside "" (the whole server).
const std::string kServiceName = v1::Stemserve::service_full_name();

}  // namespace

grpc::Status admit(const GrpcContext& ctx, const grpc::CallbackServerContext* call) {
  if (!ctx.expected_auth.empty()) {
    const auto& md = call->client_metadata();
    auto it = md.find("authorization");
    const std::string_view given = it == md.end() ? std::string_view() : std::string_view(it->second.data(), it->second.size());
    if (!constant_time_equal(given, ctx.expected_auth))
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "a valid API key is required: send the metadata 'authorization: Bearer <key>'");
  }
  if (ctx.draining.load()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down");
  if (!ctx.ready.load())
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the model is still loading; retry when the health check says SERVING");
  return grpc::Status::OK;
}

grpc::Status status_of(const ApiError& e) {
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  switch (e.status()) {
    case 400: code = grpc::StatusCode::INVALID_ARGUMENT; break;
    case 401: code = grpc::StatusCode::UNAUTHENTICATED; break;
    case 404: code = grpc::StatusCode::NOT_FOUND; break;
    case 413:
    case 429: code = grpc::StatusCode::RESOURCE_EXHAUSTED; break;
    case 503: code = grpc::StatusCode::UNAVAILABLE; break;
    default: break;
  }
  std::string message = e.what();
  // The message starts with the field's name: "top_p must be ...", "'text' must not be empty",
  // else "max_tokens: This model's maximum context length is ...".
  const std::string& field = e.param();
  if (!field.empty() && message.rfind(field + " ", 0) != 0 && message.rfind("'" + field + "'", 0) != 0)
    message = field + ": " + message;
  return grpc::Status(code, message);
}

struct GrpcServer::Impl {
  ApiOptions options;
  GrpcContext ctx;
  Service service{ctx};
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  bool shut_down = false;
};

GrpcServer::GrpcServer(const ApiOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->options = options;
  impl_->ctx.expected_auth = expected_authorization(options.api_key);
}

GrpcServer::~GrpcServer() { shutdown(std::chrono::milliseconds(0)); }

void GrpcServer::start() {
  Impl& m = *impl_;
  // Both are process-wide switches read when a server is built; the second adds gRPC's own
  // reflection service, grpc.reflection.v1alpha (for older clients).
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  // gRPC's health service is built without protobuf's C++ code; the schema reflection gives for it
  // is ours (proto/grpc/health/v1/health.proto), in the descriptor pool once its generated code is
  // linked: naming one of its messages links it.
  (void)grpc::health::v1::HealthCheckRequest::descriptor();
  grpc::ServerBuilder builder;
  // Reflection v1, ours (server/grpc_reflection_v1.h): what current clients ask for first.
  builder.SetOption(reflection_v1_option());
  const std::string address = listen_address(m.options.host, m.options.grpc_port);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &m.port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(std::min<int64_t>(m.options.max_request_bytes, INT32_MAX)));
  // gRPC sets SO_REUSEPORT by default: a second server on the same port would then share it
  // silently instead of failing as the HTTP port does.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(&m.service);
  // With an API key, reflection (both versions) asks for it too; health stays open, as GET /health does.
  if (auto auth = make_reflection_auth(m.ctx.expected_auth)) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
    interceptors.push_back(std::move(auth));
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  m.server = builder.BuildAndStart();
  if (!m.server || m.port == 0)
    throw Error("cannot listen for gRPC on " + address + " (is the address in use or not local? --grpc-port -1 turns gRPC off)");
  // Not serving until the model is loaded (the default health service starts out SERVING).
  grpc::HealthCheckServiceInterface* health = m.server->GetHealthCheckService();
  health->SetServingStatus("", false);
  health->SetServingStatus(kServiceName, false);
}

int GrpcServer::port() const { return impl_->port; }

void GrpcServer::attach(const Engine& engine, EngineLoop& loop, ServerMetrics& metrics) {
  GrpcContext& c = impl_->ctx;
  c.loop = &loop;
  c.metrics = &metrics;
  c.model = ServedModel::of(engine, impl_->options.served_model_name);
  c.model.tool_call_parser = impl_->options.tool_call_parser;
  c.ready.store(true);
  if (impl_->server && !c.draining.load()) {
    impl_->server->GetHealthCheckService()->SetServingStatus("", true);
    impl_->server->GetHealthCheckService()->SetServingStatus(kServiceName, true);
  }
}

void GrpcServer::begin_drain() {
  impl_->ctx.draining.store(true);
  // NOT_SERVING for every service from now on; later SetServingStatus calls are ignored.
  if (impl_->server) impl_->server->GetHealthCheckService()->Shutdown();
}

void GrpcServer::shutdown(std::chrono::milliseconds grace) {
  Impl& m = *impl_;
  if (!m.server || m.shut_down) return;
  m.shut_down = true;
  begin_drain();
  m.server->Shutdown(std::chrono::system_clock::now() + grace);
}

}  // namespace stem
