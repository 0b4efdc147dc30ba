#include "server/http_server.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "text/tokenizer.h"
#include "server/auth.h"
#include "server/http_context.h"
#include "server/openai_response.h"

namespace stem {

using ojson = nlohmann::ordered_json;

void send_json(httplib::Response& res, int status, const ojson& body) {
  res.status = status;
  // Token texts are valid UTF-8 by construction; `replace` keeps a stray byte from killing a response.
  res.set_content(body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) {
  send_json(res, e.status(), error_body(e.what(), e.type(), e.param(), e.status()));
}

namespace {

// Runs a handler body: ApiErrors become their status, other stem::Errors 400 (they come from
// validating the request), anything else 500; the server never dies on a request.
template <typename Fn>
void guarded(httplib::Response& res, Fn&& fn) {
  try {
    fn();
  } catch (const ApiError& e) {
    send_error(res, e);
  } catch (const Error& e) {
    send_error(res, ApiError(400, e.what()));
  } catch (const std::exception& e) {
    spdlog::error("request failed: {}", e.what());
    send_error(res, ApiError(500, std::string("internal error: ") + e.what()));
  }
}

}  // namespace

struct HttpServer::Impl {
  ApiOptions options;
  httplib::Server server;
  HttpContext ctx;
  std::thread thread;
  int port = 0;

  void routes();
  std::vector<std::pair<std::string, std::string>> route_methods;  // (path, method) of every route
};

void HttpServer::Impl::routes() {
  const std::string expected_auth = expected_authorization(options.api_key);
  server.set_pre_routing_handler([this, expected_auth](const httplib::Request& req, httplib::Response& res) {
    if (req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    if (!expected_auth.empty() && !constant_time_equal(req.get_header_value("Authorization"), expected_auth)) {
      send_error(res, ApiError(401, "a valid API key is required: send 'Authorization: Bearer <key>'", "", "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    }
    if (!ctx.ready.load()) {
      send_error(res, ApiError(503, "the model is still loading; retry when GET /health answers 200"));
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // Routing misses, oversized bodies and the like: httplib sets the status; we add the body. A
  // route asked with another method is 405 with the method it takes (Allow), not httplib's 404.
  // The routes, each registered through get() or post(), which record its method for that handler.
  auto get = [this](const char* path, httplib::Server::Handler handler) {
    route_methods.emplace_back(path, "GET");
    server.Get(path, std::move(handler));
  };
  auto post = [this](const char* path, httplib::Server::Handler handler) {
    route_methods.emplace_back(path, "POST");
    server.Post(path, std::move(handler));
  };
  server.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404)
      for (const auto& [path, method] : route_methods)
        if (req.path == path && req.method != method) {
          res.status = 405;
          res.set_header("Allow", method);
          return send_error(res, ApiError(405, req.method + " is not allowed on " + req.path + "; use " + method));
        }
    std::string what = res.status == 404   ? "no route for " + req.method + " " + req.path
                       : res.status == 413 ? "the request body is larger than the server's limit (--max-request-bytes)"
                       : res.status == 405 ? "method not allowed"
                                           : "the request could not be served";
    send_error(res, ApiError(res.status, what));
  });
  server.set_logger([](const httplib::Request& req, const httplib::Response& res) {
    spdlog::debug("{}:{} {} {} -> {}", req.remote_addr, req.remote_port, req.method, req.path, res.status);
  });
  server.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    send_error(res, ApiError(500, "internal error"));
  });

  get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (ctx.ready.load()) {
      res.status = 200;
    } else {
      send_error(res, ApiError(503, "the model is still loading"));
    }
  });
  get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    const Engine& e = *ctx.model.engine;
    send_json(res, 200,
              ojson{{"object", "list"},
                    {"data", ojson::array({ojson{{"id", ctx.model.name},
                                                 {"object", "model"},
                                                 {"created", ctx.model.created},
                                                 {"owned_by", "stemserve"},
                                                 {"root", ctx.model.path},
                                                 {"max_model_len", e.max_model_len()}}})}});
  });
  post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generation(ctx, ApiKind::Completion, req, res);
  });
  post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_generation(ctx, ApiKind::Chat, req, res);
  });
  post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] {
      const std::vector<int32_t> ids = parse_tokenize(parse_json_body(req.body), ctx.model);
      send_json(res, 200,
                ojson{{"tokens", ids}, {"count", ids.size()}, {"max_model_len", ctx.model.engine->max_model_len()}});
    });
  });
  post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) {
    guarded(res, [&] {
      const std::vector<int32_t> ids = parse_detokenize(parse_json_body(req.body), ctx.model);
      send_json(res, 200, ojson{{"prompt", ctx.model.engine->tokenizer().decode(ids, false)}});
    });
  });
  get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(ctx.metrics->render(ctx.loop->counters()), "text/plain; version=0.0.4; charset=utf-8");
  });
}

HttpServer::HttpServer(const ApiOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->options = options;
  const int threads = options.http_threads > 0 ? std::max(4, options.http_threads) : 64;
  impl_->server.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  impl_->server.set_payload_max_length(static_cast<size_t>(options.max_request_bytes));
  impl_->server.set_keep_alive_max_count(1000);
  // An idle keep-alive connection holds a thread until this timeout, and shutdown waits for it.
  impl_->server.set_keep_alive_timeout(2);
  impl_->server.set_tcp_nodelay(true);  // SSE events are small: send each at once
  impl_->routes();
}

HttpServer::~HttpServer() {
  stop_accepting();
  join();
}

void HttpServer::start() {
  Impl& m = *impl_;
  if (m.options.port == 0) {
    m.port = m.server.bind_to_any_port(m.options.host);
    if (m.port <= 0) throw Error("cannot listen on " + m.options.host + " (any port)");
  } else {
    if (!m.server.bind_to_port(m.options.host, m.options.port))
      throw Error("cannot listen on " + m.options.host + ":" + std::to_string(m.options.port) +
                  " (is the address in use or not local?)");
    m.port = m.options.port;
  }
  m.thread = std::thread([&m] { m.server.listen_after_bind(); });
}

int HttpServer::port() const { return impl_->port; }

void HttpServer::attach(const Engine& engine, EngineLoop& loop, ServerMetrics& metrics) {
  HttpContext& c = impl_->ctx;
  c.loop = &loop;
  c.metrics = &metrics;
  c.model = ServedModel::of(engine, impl_->options.served_model_name);
  c.model.tool_call_parser = impl_->options.tool_call_parser;
  c.ready.store(true);
}

void HttpServer::stop_accepting() {
  if (!impl_->thread.joinable()) return;
  // stop() only acts on a running server: give the serving thread a moment to get there.
  for (int i = 0; i < 200 && !impl_->server.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  impl_->server.stop();
}

void HttpServer::join() {
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace stem
