// Generate over gRPC with the callback API: the request goes to the engine loop; its events come
// back on the engine's thread, queue up as GenerateResponse messages, and are written one at a
// time (the callback API allows one write in flight). A client that cancels, whose deadline
// passes or whose connection drops gets OnCancel, which sets the request's cancellation flag:
// the engine drops it and frees its pages at its next step.
#include <spdlog/spdlog.h>

#include <chrono>
#include <deque>
#include <memory>
#include <mutex>

#include "text/tokenizer.h"
#include "server/grpc_context.h"
#include "server/grpc_convert.h"

namespace stem {

namespace v1 = stemserve::v1;

namespace {

// What the engine's thread and gRPC's threads share. Held by the engine's sink as well as by the
// reactor, because the engine may send events after the call has ended.
struct GenerateStream {
  grpc::ServerWriteReactor<grpc::ByteBuffer>* reactor = nullptr;  // valid until `finished`
  std::shared_ptr<std::atomic<bool>> cancel_flag = std::make_shared<std::atomic<bool>>(false);
  bool logprobs = false;
  const Tokenizer* tokenizer = nullptr;
  toolcall::ToolRequest tools;   // chat with tools: calls are read back from each sequence's text
  std::vector<ToolText> held;    // per sequence, under tools

  std::mutex mu;
  std::deque<v1::GenerateResponse> queue;  // messages not yet written
  grpc::ByteBuffer out;                    // the message being written
  bool writing = false;                    // a write is in flight
  bool client_gone = false;                // cancelled, deadline passed or a write failed
  bool finished = false;                   // Finish() was called: the reactor may be gone
  int32_t open = 0;                        // sequences not yet finished
  grpc::Status status;                     // the first error an engine event carried

  RequestTimer timer;  // touched only on the engine's thread


  // The engine's sink: the event joins the queue, merged into the sequence's queued message when
  // there is one (a slow reader gets several tokens per message rather than a growing queue).
  void push(const TokenEvent& e) {
    timer.observe(e);
    {
      std::lock_guard lock(mu);
      if (finished || client_gone) return;
      if (e.finished) --open;
      if (e.finished && e.finish == FinishReason::Abort) {
        // As the HTTP API: shutdown is UNAVAILABLE (retry elsewhere), a fault INTERNAL.
        if (status.ok())
          status = grpc::Status(e.error.rfind("internal error", 0) == 0 ? grpc::StatusCode::INTERNAL
                                                                         : grpc::StatusCode::UNAVAILABLE,
                                e.error);
      } else if (e.finished || e.token >= 0 || !e.text.empty()) {
        const bool merge = !queue.empty() && queue.back().index() == static_cast<uint32_t>(e.index) &&
                           queue.back().finish_reason() == v1::FINISH_REASON_UNSPECIFIED;
        if (!merge) queue.emplace_back();
        add_event(e, logprobs, *tokenizer, queue.back(), &tools,
                  static_cast<size_t>(e.index) < held.size() ? &held[static_cast<size_t>(e.index)] : nullptr);
      }
    }
    pump();
  }

  // Starts the next write, or finishes the call when nothing is left to write. The decision is
  // taken under the lock, the call to gRPC made outside it (gRPC may run OnWriteDone inline).
  // A write in flight or `finished` keeps anyone else from finishing, so the reactor is alive.
  void pump() {
    grpc::Status finish_with;
    bool finish = false;
    {
      std::lock_guard lock(mu);
      if (finished || writing) return;
      if (client_gone) {
        finish_with = grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the call");
      } else if (!queue.empty()) {
        out = serialize_message(queue.front());
        queue.pop_front();
        writing = true;
      } else if (open == 0) {
        finish_with = status;
      } else {
        return;
      }
      finish = finished = !writing;
    }
    if (finish) {
      reactor->Finish(finish_with);
    } else {
      reactor->StartWrite(&out);
    }
  }
};

class GenerateCall final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit GenerateCall(std::shared_ptr<GenerateStream> stream) : stream_(std::move(stream)) {
    stream_->reactor = this;
  }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard lock(stream_->mu);
      stream_->writing = false;
      if (!ok) stream_->client_gone = true;
    }
    if (!ok) stream_->cancel_flag->store(true);
    stream_->pump();
  }
  void OnCancel() override {
    stream_->cancel_flag->store(true);  // the engine frees the request's pages at its next step
    {
      std::lock_guard lock(stream_->mu);
      stream_->client_gone = true;
      stream_->queue.clear();
    }
    stream_->pump();
  }
  void OnDone() override { delete this; }

 private:
  std::shared_ptr<GenerateStream> stream_;
};

}  // namespace

grpc::ServerWriteReactor<grpc::ByteBuffer>* start_generate(GrpcContext& ctx, grpc::CallbackServerContext* call,
                                                           const grpc::ByteBuffer* request) {
  auto stream = std::make_shared<GenerateStream>();
  auto* reactor = new GenerateCall(stream);
  auto fail = [&](const grpc::Status& status) {
    stream->finished = true;
    reactor->Finish(status);
    return reactor;
  };
  if (grpc::Status s = admit(ctx, call); !s.ok()) return fail(s);
  v1::GenerateRequest in;
  if (grpc::Status s = parse_message(request, in); !s.ok()) return fail(s);
  try {
    ParsedGeneration parsed = parse_grpc_generate(in, ctx.model);
    const int32_t n = parsed.request.n;
    stream->open = n;
    stream->timer.start(ctx.metrics, n);
    stream->logprobs = parsed.logprobs;
    stream->tools = parsed.tools;
    if (parsed.kind == ApiKind::Chat && parsed.tools.choice != toolcall::Choice::None)
      stream->held.resize(static_cast<size_t>(n));
    stream->tokenizer = &ctx.model.engine->tokenizer();
    parsed.request.cancelled = stream->cancel_flag;
    ctx.loop->submit(std::move(parsed.request), [stream](const TokenEvent& e) { stream->push(e); });
  } catch (const ApiError& e) {
    return fail(status_of(e));
  } catch (const QueueFullError& e) {
    return fail(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, e.what()));
  } catch (const ShuttingDownError& e) {
    return fail(grpc::Status(grpc::StatusCode::UNAVAILABLE, e.what()));
  } catch (const Error& e) {
    return fail(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, e.what()));
  } catch (const std::exception& e) {
    spdlog::error("gRPC Generate failed: {}", e.what());
    return fail(grpc::Status(grpc::StatusCode::INTERNAL, std::string("internal error: ") + e.what()));
  }
  spdlog::debug("gRPC Generate from {}", call->peer());
  return reactor;
}

}  // namespace stem
