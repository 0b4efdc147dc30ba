"""Security defaults against the real server: it listens on 127.0.0.1 unless told otherwise; with
--api-key every HTTP route but /health and every gRPC method but health (reflection included)
refuses a missing or wrong key; the caps on body size, prompt length, n and max_tokens answer
with a 4xx naming the setting; no request field is ever opened as a file (checked with strace)."""
import os
import pathlib
import re
import shutil
import signal
import subprocess
import tempfile

import grpc
import httpx
import pytest

from grpc_helpers import channel, reflection_v1_info, reflection_v1_pb2, stubs

pb, pb_grpc = stubs()


def listening_addresses(port):
    """The local addresses of the sockets in LISTEN state on `port` (from /proc/net/tcp, tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = pathlib.Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                found.append(addr)
    return found


def test_binds_loopback_by_default(make_server):
    s = make_server(host=None)  # no --host: the binary's default
    assert "listening on http://127.0.0.1:" in s.log_text()
    assert f"gRPC listening on 127.0.0.1:{s.grpc_port}" in s.log_text()
    for port in (s.port, s.grpc_port):
        addrs = listening_addresses(port)
        assert addrs, f"no listening socket on port {port}"
        # 127.0.0.1 in /proc's byte order, plain (tcp) or IPv4-mapped (tcp6, as gRPC binds it);
        # 0.0.0.0 / :: would be all zeros.
        assert all(a in ("0100007F", "0000000000000000FFFF00000100007F") for a in addrs), addrs


HTTP_ROUTES = [("GET", "/v1/models", None), ("POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 1}),
               ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}),
               ("POST", "/tokenize", {"prompt": "Hi"}), ("POST", "/detokenize", {"tokens": [1]}),
               ("GET", "/metrics", None), ("GET", "/v1/nothing", None), ("POST", "/health", {})]
BAD_KEYS = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
            {"Authorization": "Bearer s3cret-and-more"}, {"Authorization": "Bearer s3cre"},
            {"Authorization": "bearer s3cret"}, {"X-Api-Key": "s3cret"}]


def test_api_key_on_every_route_but_health(make_server):
    s = make_server("--api-key", "s3cret")
    assert httpx.get(s.url + "/health", timeout=10).status_code == 200
    for method, path, body in HTTP_ROUTES:
        if path == "/health":
            continue
        for headers in BAD_KEYS:
            r = httpx.request(method, s.url + path, json=body, headers=headers, timeout=10)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert "API key" in r.json()["error"]["message"]
    ok = {"Authorization": "Bearer s3cret"}
    expected = {"/v1/nothing": 404, "/health": 405}  # POST on GET /health: the wrong method
    for method, path, body in HTTP_ROUTES:
        r = httpx.request(method, s.url + path, json=body, headers=ok, timeout=60)
        assert r.status_code == expected.get(path, 200), (method, path, r.text)

    # gRPC: every Stemserve method and reflection (v1 and v1alpha); health stays open.
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    ch = channel(s.grpc_target)
    st = pb_grpc.StemserveStub(ch)
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    refl_v1, v1 = reflection_v1_info(ch), reflection_v1_pb2()
    calls = {
        "Generate": lambda md: list(st.Generate(pb.GenerateRequest(text="Hi", max_tokens=1), metadata=md, timeout=30)),
        "Tokenize": lambda md: st.Tokenize(pb.TokenizeRequest(text="Hi"), metadata=md, timeout=10),
        "Detokenize": lambda md: st.Detokenize(pb.DetokenizeRequest(token_ids=[1]), metadata=md, timeout=10),
        "ModelInfo": lambda md: st.ModelInfo(pb.ModelInfoRequest(), metadata=md, timeout=10),
        "reflection": lambda md: list(refl.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=md, timeout=10)),
        "reflection v1": lambda md: list(refl_v1(
            iter([v1.ServerReflectionRequest(file_containing_symbol="stemserve.v1.Stemserve")]), metadata=md,
            timeout=10)),
    }
    for name, call in calls.items():
        for md in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
            with pytest.raises(grpc.RpcError) as e:
                call(md)
            # Reflection is refused before it answers; gRPC's interceptors can only cancel it.
            want = grpc.StatusCode.CANCELLED if name.startswith("reflection") else grpc.StatusCode.UNAUTHENTICATED
            assert e.value.code() == want, (name, md, e.value.details())
        assert call((("authorization", "Bearer s3cret"),)), name
    assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status == \
        health_pb2.HealthCheckResponse.SERVING
    ch.close()
    assert "refused, no valid API key" in s.log_text()
    for service in ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"):
        assert f"gRPC /{service}/ServerReflectionInfo from " in s.log_text(), service


def test_caps_name_their_setting(make_server):
    s = make_server("--max-num-seqs", "2", "--max-request-bytes", "8000")  # and --max-model-len 512
    cases = [
        ({"prompt": "Hi", "n": 3}, "n", "--max-num-seqs"),
        ({"prompt": list(range(1, 513))}, "prompt", "--max-model-len"),
        ({"prompt": "hello " * 600}, "prompt", "--max-model-len"),
        ({"prompt": "Hi", "max_tokens": 600}, "max_tokens", "--max-model-len"),
        ({"prompt": "Hi", "max_tokens": -1}, "max_tokens", "at least 1"),
    ]
    for body, param, words in cases:
        r = httpx.post(s.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 400, (body, r.text)
        err = r.json()["error"]
        assert err["param"] == param and words in err["message"], err
    r = httpx.post(s.url + "/v1/chat/completions", timeout=30,
                   json={"messages": [{"role": "user", "content": "hello " * 600}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    # The body cap: 413 over HTTP (test_errors checks the message), RESOURCE_EXHAUSTED over gRPC.
    assert httpx.post(s.url + "/v1/completions", json={"prompt": "x" * 9000}, timeout=30).status_code == 413
    st = pb_grpc.StemserveStub(channel(s.grpc_target))
    with pytest.raises(grpc.RpcError) as e:
        list(st.Generate(pb.GenerateRequest(text="x" * 9000, max_tokens=1), timeout=30))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.RpcError) as e:
        list(st.Generate(pb.GenerateRequest(text="Hi", n=3), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max-num-seqs" in e.value.details()
    # Still serving.
    assert httpx.post(s.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 1}, timeout=60).status_code == 200


def _strace_works():
    if not shutil.which("strace"):
        return False
    return subprocess.run(["strace", "-f", "-o", os.devnull, "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _strace_works(), reason="strace is missing or may not trace here")
def test_no_request_field_is_opened_as_a_file(make_server, tmp_path):
    """Every string field of every route carries a path that exists (or a marker name); strace
    records every file system call the server makes: none of them names what a request sent."""
    secret = tmp_path / "MARKERSECRET.txt"
    secret.write_text("do not serve me")
    trace = tmp_path / "trace.txt"
    # LeakSanitizer cannot run under ptrace: an ASan build (scripts/test_sanitize.sh) skips it here.
    asan = os.environ.get("ASAN_OPTIONS", "")
    s = make_server(wrapper=["strace", "-f", "-qq", "-e", "trace=%file,%desc", "-s", "256", "-o", str(trace)],
                    env={"ASAN_OPTIONS": (asan + ":" if asan else "") + "detect_leaks=0"})
    paths = [str(secret), "../../../../" + str(secret), "file://" + str(secret), str(tmp_path / "MARKERNEW"),
             "/proc/self/environ", "MARKERREL/../MARKERREL"]
    for p in paths:
        bodies = [
            ("/v1/completions", {"model": p, "prompt": "Hi", "max_tokens": 1}),
            ("/v1/completions", {"prompt": p, "max_tokens": 1, "stop": [p], "suffix": p, "sparse_prefill": p}),
            ("/v1/chat/completions", {"messages": [{"role": p, "content": p, "name": p}], "max_tokens": 1,
                                      "tools": [{"type": "function", "function": {"name": p}}]}),
            ("/tokenize", {"model": p, "prompt": p}),
            ("/detokenize", {"model": p, "tokens": [1]}),
        ]
        for path, body in bodies:
            r = httpx.post(s.url + path, json=body, timeout=60)
            assert r.status_code in (200, 400, 404), (path, body, r.text)
            assert "do not serve me" not in r.text and "PATH=" not in r.text
        r = httpx.get(s.url + "/v1/models", params={"model": p}, timeout=10)
        assert "do not serve me" not in r.text and "PATH=" not in r.text
        st = pb_grpc.StemserveStub(channel(s.grpc_target))
        try:
            list(st.Generate(pb.GenerateRequest(model=p, text=p, max_tokens=1, stop=[p]), timeout=30))
        except grpc.RpcError as e:
            assert e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), e.details()
    # SIGTERM goes to the server itself (strace's child); strace ends when it does.
    server_pid = int(pathlib.Path(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children").read_text().split()[0])
    os.kill(server_pid, signal.SIGTERM)
    # Under strace the signal may be handed to any thread, OpenBLAS's worker included (serve.cc
    # forwards it from there to the thread that waits for it): the exit is clean all the same.
    assert s.proc.wait(timeout=60) == 0, s.log_text()
    text = trace.read_text(errors="replace")
    assert "openat(" in text  # the trace did record the server's own opens (model files)
    for line in text.splitlines():
        # (/proc/self/environ is not looked for: the ASan runtime reads it at start.)
        assert "MARKER" not in line, line
