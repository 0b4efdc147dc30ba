// What the HTTP handlers share (private to server/http_*.cc).
#pragma once
#include <httplib.h>

#include <atomic>
#include <nlohmann/json.hpp>

#include "engine/engine_loop.h"
#include "server/api_error.h"
#include "server/metrics.h"
#include "server/request_parse.h"

namespace stem {

struct HttpContext {
  std::atomic<bool> ready{false};
  EngineLoop* loop = nullptr;
  ServerMetrics* metrics = nullptr;
  ServedModel model;
};

void send_json(httplib::Response& res, int status, const nlohmann::ordered_json& body);
void send_error(httplib::Response& res, const ApiError& error);
// POST /v1/completions and /v1/chat/completions, JSON or SSE.
void handle_generation(HttpContext& ctx, ApiKind kind, const httplib::Request& req, httplib::Response& res);

}  // namespace stem
