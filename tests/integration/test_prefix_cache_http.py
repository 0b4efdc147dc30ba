"""Prefix caching through the real server (docs/prefix_caching.md): a repeated prompt reports its
cached tokens in usage.prompt_tokens_details (HTTP) and Usage.cached_tokens (gRPC) and gives the
same greedy text; cache_salt separates tenants; the Prometheus counters and gauge move; the debug
log has a line per hit; --no-enable-prefix-caching turns it all off. When the requests are done
no page is in use, however many are cached."""
import httpx

from grpc_helpers import channel, collect, stubs

pb, pb_grpc = stubs()

DOC = " ".join(f"Line {i} of the shared document says nothing much." for i in range(1, 25))


def complete(server, **extra):
    body = {"prompt": DOC + "\nQuestion: which line comes after 7?", "max_tokens": 6, "temperature": 0,
            "ignore_eos": True, **extra}
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def cached(r):
    return r["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_a_repeated_prompt_is_served_from_the_cache(make_server):
    # Room for every prompt below (the CPU default is one --max-model-len sequence, 512 tokens):
    # none is evicted.
    server = make_server("--log-level", "debug", "--kv-cache-tokens", "4096")
    first = complete(server)
    prompt_tokens = first["usage"]["prompt_tokens"]
    assert prompt_tokens > 200
    assert cached(first) == 0
    again = complete(server)
    assert cached(again) == (prompt_tokens - 1) // 16 * 16
    assert again["choices"][0]["text"] == first["choices"][0]["text"]
    assert "prefix cache hit:" in server.log_text()

    # The metrics are set when the engine's step ends, which may be just after the answer arrives.
    server.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)
    server.wait_metric("stemserve_prefix_cache_hits_total", lambda v: v == cached(again))
    m = server.metrics()
    assert m["stemserve_prefix_cache_queries_total"] == 2 * prompt_tokens
    assert m["stemserve_prefix_cache_pages"] >= prompt_tokens // 16

    # Another tenant's salt misses, then hits its own pages; the chat endpoint reports it too.
    assert cached(complete(server, cache_salt="tenant-a")) == 0
    assert cached(complete(server, cache_salt="tenant-a")) == cached(again)
    bad = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "cache_salt": ""}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "cache_salt"
    chat = {"messages": [{"role": "user", "content": DOC}], "max_tokens": 2, "temperature": 0}
    for expect_hit in (False, True):
        r = httpx.post(server.url + "/v1/chat/completions", json=chat, timeout=120)
        assert r.status_code == 200, r.text
        assert (cached(r.json()) > 0) == expect_hit

    # gRPC: the same prompt, with the same salt, reports the same hit.
    ch = channel(server.grpc_target)
    try:
        stub = pb_grpc.StemserveStub(ch)
        req = pb.GenerateRequest(text=DOC + "\nQuestion: which line comes after 7?", max_tokens=6,
                                 sampling=pb.SamplingParams(temperature=0), ignore_eos=True, cache_salt="tenant-a")
        seqs = collect(stub.Generate(req, timeout=120))
        assert seqs[0]["last"].usage.cached_tokens == cached(again)
        assert seqs[0]["text"] == first["choices"][0]["text"]
    finally:
        ch.close()
    server.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)


def test_prefix_caching_can_be_turned_off(make_server):
    server = make_server("--no-enable-prefix-caching")
    first, again = complete(server), complete(server)
    assert cached(first) == cached(again) == 0
    assert again["choices"][0]["text"] == first["choices"][0]["text"]
    server.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)  # the last step observed
    m = server.metrics()
    assert m["stemserve_prefix_cache_hits_total"] == 0
    assert m["stemserve_prefix_cache_pages"] == 0


# Stem through the real server (docs/prefix_caching.md, "Stem: what a cache hit does"): a ~390-token
# prompt is 4 blocks of 128; with one sink and one window block, blocks 2 and 3 are selected
# sparsely (--stem-min-prompt-len 256).
STEM_FLAGS = ("--sparse-prefill", "stem", "--stem-min-prompt-len", "256", "--stem-sink-blocks", "1",
              "--stem-window-blocks", "1", "--log-level", "debug", "--kv-cache-tokens", "4096")
COUNTING = ", ".join(str(i) for i in range(1, 100))


def test_a_causal_stem_prefill_is_cached_in_whole_blocks(make_server):
    # The threshold selector is causal: a block's selection depends on the blocks before it only,
    # so every whole prompt block (0..2) is cached and a hit restarts on a block boundary.
    server = make_server(*STEM_FLAGS, "--stem-selector", "threshold", "--stem-threshold", "0.5")
    body = {"prompt": COUNTING, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    first = httpx.post(server.url + "/v1/completions", json=body, timeout=120).json()
    prompt_tokens = first["usage"]["prompt_tokens"]
    assert 384 < prompt_tokens < 512
    sparse = server.log_text().count("stem: ")
    assert sparse >= 1 and cached(first) == 0
    again = httpx.post(server.url + "/v1/completions", json=body, timeout=120).json()
    assert cached(again) == 384  # blocks 0..2; block 3, the partial last one, is computed again
    assert again["choices"][0]["text"] == first["choices"][0]["text"]
    assert first["choices"][0]["text"].startswith(", 100"), first
    assert server.log_text().count("stem: ") > sparse  # block 3 again with Stem, on the cached blocks
    server.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)


def test_the_paper_schedule_shares_only_its_dense_leading_blocks(make_server):
    # The paper's top-k schedule depends on the prompt's length: only the leading blocks it keeps
    # dense (here block 0: k_s = 4 blocks · budget rate 0.25 = 1) are cached.
    server = make_server(*STEM_FLAGS, "--stem-selector", "topk", "--stem-schedule", "paper",
                         "--stem-budget-rate", "0.25")
    body = {"prompt": COUNTING, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    first = httpx.post(server.url + "/v1/completions", json=body, timeout=120).json()
    again = httpx.post(server.url + "/v1/completions", json=body, timeout=120).json()
    assert cached(first) == 0 and cached(again) == 128
    assert again["choices"][0]["text"] == first["choices"][0]["text"]
    server.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)
