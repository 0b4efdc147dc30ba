// EngineLoop on the default model: requests from several threads (the greedy tokens of each as
// alone, within rounding: tests/rounding.h), a full queue refused with QueueFullError, drain()
// letting work finish or aborting what is left, and counters.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "engine/engine_loop.h"
#include "text/tokenizer.h"
#include "tests/rounding.h"
#include "tests/test_util.h"

using namespace stem;
namespace fs = std::filesystem;

namespace {

struct Collector {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<TokenEvent> finished;
  std::vector<int32_t> tokens;
  StreamSink sink() {
    return [this](const TokenEvent& e) {
      std::lock_guard lock(mu);
      if (e.token >= 0) tokens.push_back(e.token);
      if (e.finished) finished.push_back(e);
      cv.notify_all();
    };
  }
  bool wait_finished(size_t n, std::chrono::seconds timeout = std::chrono::seconds(60)) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, timeout, [&] { return finished.size() >= n; });
  }
};

template <typename Fn>
bool eventually(Fn&& fn) {
  for (int i = 0; i < 500; ++i) {
    if (fn()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

std::unique_ptr<Engine> load(int64_t max_num_seqs) {
  EngineOptions o;
  o.max_model_len = 256;
  o.max_num_seqs = max_num_seqs;
  return std::make_unique<Engine>(test::default_model_dir(), o);
}

GenerateRequest request(const Engine& e, int32_t max_tokens) {
  GenerateRequest r;
  r.prompt = e.tokenizer().encode("Once upon a time", true);
  r.sampling.temperature = 0;
  r.stop.max_tokens = max_tokens;
  r.stop.ignore_eos = true;
  return r;
}

}  // namespace

TEST_CASE("engine loop: requests from several threads all finish, with the same greedy tokens") {
  if (!fs::exists(test::default_model_dir() / "model.safetensors")) SKIP("default model not prepared");
  auto engine = load(8);
  GenerateRequest ref = request(*engine, 5);
  ref.sampling.logprobs = true;
  ref.sampling.top_logprobs = 2;
  const GenerateResult alone = engine->generate(ref);
  const double tol = test::rounding_tolerance(engine->config(), 256);
  EngineLoop loop(*engine, 16);
  std::vector<Collector> out(6);
  std::vector<std::thread> threads;
  for (auto& c : out) threads.emplace_back([&] { loop.submit(request(*engine, 5), c.sink()); });
  for (auto& t : threads) t.join();
  for (auto& c : out) {
    REQUIRE(c.wait_finished(1));
    test::check_same_greedy(alone.tokens, alone.samples, c.tokens, tol);
    CHECK(c.finished[0].finish == FinishReason::Length);
    CHECK(c.finished[0].completion_tokens == 5);
  }
  CHECK(loop.drain(std::chrono::seconds(5)) == 0);
  // The counters are refreshed at the end of the loop's iteration, just after the last event.
  CHECK(eventually([&] { return loop.counters().generation_tokens == 6 * 5 + 5; }));
  CHECK(loop.counters().used_pages == 0);
}

TEST_CASE("engine loop: a full queue refuses, a bad request throws on the caller's thread") {
  if (!fs::exists(test::default_model_dir() / "model.safetensors")) SKIP("default model not prepared");
  auto engine = load(1);
  EngineLoop loop(*engine, 1);
  Collector a, b;
  loop.submit(request(*engine, 200), a.sink());
  loop.submit(request(*engine, 200), b.sink());
  Collector c;
  CHECK_THROWS_AS(loop.submit(request(*engine, 2), c.sink()), QueueFullError);
  GenerateRequest empty = request(*engine, 2);
  empty.prompt.clear();
  CHECK(test::error_of([&] { loop.submit(empty, c.sink()); }) == "the prompt is empty");
  // drain() with no time left ends both with an error, and then refuses new work.
  CHECK(loop.drain(std::chrono::milliseconds(0)) == 2);
  REQUIRE(a.wait_finished(1));
  REQUIRE(b.wait_finished(1));
  CHECK(a.finished[0].finish == FinishReason::Abort);
  CHECK(a.finished[0].error.find("shutting down") != std::string::npos);
  CHECK_THROWS_AS(loop.submit(request(*engine, 2), c.sink()), ShuttingDownError);
  CHECK(eventually([&] { return loop.counters().used_pages == 0; }));
}

TEST_CASE("engine loop: cancelling a queued request frees its room in the queue") {
  if (!fs::exists(test::default_model_dir() / "model.safetensors")) SKIP("default model not prepared");
  auto engine = load(1);
  EngineLoop loop(*engine, 0);
  Collector a;
  GenerateRequest r = request(*engine, 200);
  r.cancelled = std::make_shared<std::atomic<bool>>(false);
  loop.submit(r, a.sink());
  Collector b;
  CHECK_THROWS_AS(loop.submit(request(*engine, 2), b.sink()), QueueFullError);
  r.cancelled->store(true);
  REQUIRE(a.wait_finished(1));
  CHECK(a.finished[0].finish == FinishReason::Cancelled);
  loop.submit(request(*engine, 2), b.sink());
  REQUIRE(b.wait_finished(1));
  CHECK(b.finished[0].finish == FinishReason::Length);
}
