// Completions and chat completions over HTTP: the request goes to the engine loop, whose events
// come back through an Exchange; the handler turns them into one JSON response or SSE events.
// A client that goes away sets the request's cancellation flag.
#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>

#include "text/tokenizer.h"
#include "server/connection_probe.h"
#include "server/http_context.h"
#include "server/openai_response.h"

namespace stem {

using ojson = nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

namespace {

// Between the engine's thread (push) and the HTTP thread (take). Shared, so it outlives whichever
// side lets go first.
struct Exchange {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<TokenEvent> events;
  std::shared_ptr<std::atomic<bool>> cancelled = std::make_shared<std::atomic<bool>>(false);
  RequestTimer timer;  // touched only on the engine's thread

  void push(const TokenEvent& e) {
    timer.observe(e);
    {
      std::lock_guard lock(mu);
      events.push_back(e);
    }
    cv.notify_one();
  }
  // Waits up to `timeout` for events; returns those that came (maybe none).
  std::deque<TokenEvent> take(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu);
    cv.wait_for(lock, timeout, [&] { return !events.empty(); });
    std::deque<TokenEvent> out;
    out.swap(events);
    return out;
  }
};

constexpr std::chrono::milliseconds kPoll{200};

std::string sse(const ojson& j) {
  return "data: " + j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n\n";
}

// Takes the request's events until its n sequences have finished, handing each to `on_event`.
// Every kPoll (by the clock: events may come faster) it looks at the connection and cancels the
// request when the client has gone away; the engine drops it and frees its pages at its next step.
// Returns false when it stopped early: the client went away, or on_event returned false.
template <typename OnEvent>
bool follow_events(Exchange& x, ConnectionProbe& probe, const std::string& id, int32_t n, OnEvent&& on_event) {
  int32_t open = n;
  auto next_probe = Clock::now() + kPoll;
  while (open > 0) {
    std::deque<TokenEvent> events = x.take(kPoll);
    if (Clock::now() >= next_probe) {
      next_probe = Clock::now() + kPoll;
      if (!x.cancelled->load() && probe.closed()) {
        spdlog::info("{}: client went away; cancelling", id);
        x.cancelled->store(true);
        return false;
      }
    }
    for (const TokenEvent& e : events) {
      open -= e.finished;
      if (!on_event(e)) return false;
    }
  }
  return true;
}

// An engine abort (shutdown, internal error) as the client sees it.
ApiError abort_error(const std::string& why) {
  return why.rfind("internal error", 0) == 0 ? ApiError(500, why) : ApiError(503, why);
}

}  // namespace

void handle_generation(HttpContext& ctx, ApiKind kind, const httplib::Request& req, httplib::Response& res) {
  ParsedGeneration parsed;
  auto x = std::make_shared<Exchange>();
  try {
    parsed = parse_generation(kind, parse_json_body(req.body), ctx.model);
    const int32_t n = parsed.request.n;
    x->timer.start(ctx.metrics, n);
    parsed.request.cancelled = x->cancelled;
    ctx.loop->submit(parsed.request, [x](const TokenEvent& e) { x->push(e); });
  } catch (const ApiError& e) {
    return send_error(res, e);
  } catch (const QueueFullError& e) {
    res.set_header("Retry-After", "1");  // the queue drains by the step: a second is a fair wait
    return send_error(res, ApiError(429, e.what()));
  } catch (const ShuttingDownError& e) {
    return send_error(res, ApiError(503, e.what()));
  } catch (const Error& e) {
    return send_error(res, ApiError(400, e.what()));
  }

  auto builder = std::make_shared<ResponseBuilder>(parsed, ctx.model.name, ctx.model.engine->tokenizer());
  auto probe = std::make_shared<ConnectionProbe>(req.remote_addr, req.remote_port, req.local_port);
  const int32_t n = parsed.request.n;
  if (!probe->found())
    spdlog::debug("{}: no socket found for {}:{} -> port {}; a disconnect is noticed only when a write fails",
                  builder->id(), req.remote_addr, req.remote_port, req.local_port);

  if (!parsed.stream) {
    std::string aborted;
    follow_events(*x, *probe, builder->id(), n, [&](const TokenEvent& e) {
      builder->add(e);
      if (e.finished && e.finish == FinishReason::Abort) aborted = e.error;
      return true;
    });
    if (x->cancelled->load()) return;  // nobody is left to read an answer
    if (!aborted.empty()) return send_error(res, abort_error(aborted));
    return send_json(res, 200, builder->response());
  }

  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  const bool chat = kind == ApiKind::Chat, include_usage = parsed.include_usage;
  res.set_chunked_content_provider(
      "text/event-stream",
      [x, builder, probe, n, chat, include_usage](size_t, httplib::DataSink& sink) {
        auto write = [&](const std::string& s) {
          if (sink.write(s.data(), s.size())) return true;
          x->cancelled->store(true);
          return false;
        };
        if (chat)
          for (int32_t i = 0; i < n; ++i)
            if (!write(sse(builder->role_chunk(i)))) return false;
        const bool all = follow_events(*x, *probe, builder->id(), n, [&](const TokenEvent& e) {
          const std::vector<ojson> chunks = builder->add(e);
          if (e.finished && e.finish == FinishReason::Abort) {
            const ApiError err = abort_error(e.error);
            return write(sse(error_body(err.what(), err.type(), "", err.status())));
          }
          for (const ojson& chunk : chunks)
            if (!write(sse(chunk))) return false;
          return true;
        });
        if (!all) return false;
        if (include_usage && !write(sse(builder->usage_chunk()))) return false;
        if (!write("data: [DONE]\n\n")) return false;
        sink.done();
        return true;
      },
      [x](bool success) {
        if (!success) x->cancelled->store(true);
      });
}

}  // namespace stem
