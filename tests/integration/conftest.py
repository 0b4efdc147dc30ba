"""Starts the real `stemserve serve` process on a free loopback port for the integration tests.
Its gRPC API gets a free port too (`grpc_port`), unless a test passes its own --grpc-port.

The binary comes from $STEMSERVE_BIN (CTest sets it), else build-test/ or build/; the model
from $STEM_TEST_MODEL, else models/cache/SmolLM2-135M-Instruct. Tests skip when the model is
not prepared. Every server listens on 127.0.0.1 only.
"""
import os
import pathlib
import re
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _binary():
    if os.environ.get("STEMSERVE_BIN"):
        return pathlib.Path(os.environ["STEMSERVE_BIN"])
    for build in ("build-test", "build", "build-serve"):
        p = ROOT / build / "server" / "stemserve"
        if p.exists():
            return p
    pytest.skip("no stemserve binary (set STEMSERVE_BIN or build first)")


def _model():
    return pathlib.Path(os.environ.get("STEM_TEST_MODEL", ROOT / "models/cache/SmolLM2-135M-Instruct"))


class Server:
    """One stemserve process; `url` is its base URL once /health answers 200; `grpc_target` is
    host:port of its gRPC API (None when started with --grpc-port -1)."""

    def __init__(self, *args, env=None, host="127.0.0.1", wrapper=()):
        model = _model()
        if not (model / "model.safetensors").exists():
            pytest.skip(f"default model not prepared at {model}")
        self.log = tempfile.NamedTemporaryFile(prefix="stemserve-", suffix=".log", delete=False)
        # A fixed gRPC port would clash between the servers the tests run at once.
        grpc_args = [] if "--grpc-port" in args else ["--grpc-port", "0"]
        # host=None leaves --host out (the binary's default); `wrapper` runs it under a tool (strace).
        host_args = ["--host", host] if host else []
        cmd = [*wrapper, str(_binary()), "serve", "--model", str(model), *host_args, "--port", "0",
               "--max-model-len", "512", *grpc_args, *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})})
        self.port = self._wait_for_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._wait_healthy()
        m = re.search(r"gRPC listening on 127\.0\.0\.1:(\d+)", self.log_text())
        self.grpc_port = int(m.group(1)) if m else None
        self.grpc_target = f"127.0.0.1:{self.grpc_port}" if m else None

    def log_text(self):
        return pathlib.Path(self.log.name).read_text(errors="replace")

    def _wait_for_port(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log_text())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"stemserve exited with {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"stemserve did not start listening:\n{self.log_text()}")

    def _wait_healthy(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"stemserve exited with {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.1)
        raise RuntimeError(f"stemserve did not become healthy:\n{self.log_text()}")

    def metrics(self, headers=None):
        """The Prometheus text as {name: value} for the series without labels, plus the raw text."""
        req = urllib.request.Request(self.url + "/metrics", headers=headers or {})
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def wait_metric(self, name, predicate, timeout=20, headers=None):
        deadline = time.time() + timeout
        value = None
        while time.time() < deadline:
            value = self.metrics(headers).get(name)
            if value is not None and predicate(value):
                return value
            time.sleep(0.1)
        raise AssertionError(f"{name} = {value} did not reach the expected value within {timeout} s")

    def sanitizer_reports(self):
        """What AddressSanitizer, LeakSanitizer or UBSan printed in the log (an instrumented build,
        scripts/test_sanitize.sh); empty for a normal build."""
        return re.findall(r"^.*(?:ERROR: (?:Address|Leak)Sanitizer|runtime error:).*$", self.log_text(), re.M)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def server():
    """The shared server: room for 32 sequences at once."""
    s = Server("--max-num-seqs", "32", "--max-queue", "64", "--max-num-batched-tokens", "256")
    yield s
    assert s.stop() == 0, s.log_text()
    assert not s.sanitizer_reports(), s.log_text()


@pytest.fixture(scope="session")
def model_name(server):
    import json
    with urllib.request.urlopen(server.url + "/v1/models", timeout=10) as r:
        return json.load(r)["data"][0]["id"]


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def make_server():
    """Starts extra servers with their own flags; stops them at the end of the test."""
    started = []

    def make(*args, env=None, **kw):
        s = Server(*args, env=env, **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()
    for s in started:
        assert not s.sanitizer_reports(), s.log_text()
