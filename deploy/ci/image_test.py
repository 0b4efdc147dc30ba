"""CI's container test (a phase of .ci/run): builds deploy/Dockerfile's CPU image with Docker and
talks to it from the host, then does the same through deploy/compose.yaml's CPU form.

Steps: the tools (deploy/ci/install_tools.sh), a dockerd of our own (data and exec roots under
$STEM_DOCKER_ROOT, default ~/.cache/stemserve-docker, so that its image layers and BuildKit's
ccache mount outlive the run: a rebuild is quick), the Debian 12 base (deploy/ci/make_base.sh),
on a fresh machine the ccache mount seeded from the host's ccache (deploy/ci/ccache_seed.Dockerfile:
the build stage then compiles little), `docker build` with BuildKit, then the default model (models/cache/SmolLM2-135M-Instruct) mounted
at /models/SmolLM2-135M-Instruct and these checks on 127.0.0.1: /health, the image's HEALTHCHECK
reaching healthy, /v1/models, a completion, a streamed chat completion, gRPC health, the server
process's user id (not 0), `docker stop` ending it with exit code 0 within the shutdown timeout,
the image's size (under 300 MB); then `docker-compose up` of the stemserve-cpu service and its
/health, completion and gRPC health. Prints one line per check and a summary line:
  image_test: N passed, M failed; image S MB; build B s; start T s; total W s
It skips (exit 0, "image_test: SKIPPED: ...") only when no dockerd can start on this machine.
Usage: .venv/bin/python deploy/ci/image_test.py   (run from anywhere; the repository is its root)
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("STEM_DOCKER", "/usr/bin/docker")  # Debian's 20.10 CLI: BuildKit built in
STATE = pathlib.Path(os.environ.get("STEM_DOCKER_ROOT", pathlib.Path.home() / ".cache" / "stemserve-docker"))
LOGS = pathlib.Path(os.environ.get("STEM_CI_LOGS", ROOT / "build-ci-logs"))
SOCKET = STATE / "docker.sock"
BASE = "stemserve-base:debian12"
IMAGE = "stemserve-cpu:0.1.0"  # the tag compose.yaml's stemserve-cpu service runs
MODEL = "SmolLM2-135M-Instruct"
UID = 10001                    # the Dockerfile's USER
STOP_TIMEOUT = 40              # compose.yaml's stop_grace_period: the server drains for 30 s
MAX_IMAGE_MB = 300
HOST_CCACHE = pathlib.Path(os.environ.get("CCACHE_DIR", pathlib.Path.home() / ".cache" / "stemserve-ccache"))
ENV = dict(os.environ, DOCKER_HOST=f"unix://{SOCKET}", DOCKER_BUILDKIT="1", COMPOSE_DOCKER_CLI_BUILD="1")

results = []   # (name, passed, detail)
figures = {}


def say(text):
    print(f"image_test: {text}", flush=True)


def check(name, passed, detail=""):
    results.append((name, bool(passed), detail))
    say(f"{'ok  ' if passed else 'FAIL'} {name}{': ' + detail if detail else ''}")
    return passed


def run(*argv, timeout=120, check_rc=True, log=None, env=None, **kw):
    """Runs a command (docker: our daemon); its output into log (a path) or returned."""
    argv = [DOCKER if argv[0] == "docker" else argv[0], *argv[1:]]
    out = open(log, "w") if log else subprocess.PIPE
    try:
        p = subprocess.run(argv, env=env or ENV, stdout=out, stderr=subprocess.STDOUT, text=True, timeout=timeout, **kw)
    finally:
        if log:
            out.close()
    if check_rc and p.returncode != 0:
        text = pathlib.Path(log).read_text()[-3000:] if log else p.stdout[-3000:]
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {p.returncode}:\n{text}")
    return p


def docker_answers():
    return subprocess.run([DOCKER, "version"], env=ENV, capture_output=True, timeout=30).returncode == 0


def start_dockerd():
    """Starts our dockerd (niced: so are the builds and containers it runs) unless one answers on
    our socket already. Returns the process we started, or None."""
    if SOCKET.exists() and docker_answers():
        say(f"dockerd already answers on {SOCKET}")
        return None
    (STATE / "data").mkdir(parents=True, exist_ok=True)
    log = open(LOGS / "dockerd.log", "w")
    proc = subprocess.Popen(["nice", "-n", "10", "dockerd", "--data-root", str(STATE / "data"),
                             "--exec-root", str(STATE / "exec"), "--pidfile", str(STATE / "dockerd.pid"),
                             "-H", f"unix://{SOCKET}", "--group", "root"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if SOCKET.exists() and docker_answers():
            say(f"dockerd started ({SOCKET}, log {LOGS / 'dockerd.log'})")
            return proc
        time.sleep(0.5)
    tail = (LOGS / "dockerd.log").read_text()[-1500:]
    if proc.poll() is None:
        proc.kill()
    say(f"SKIPPED: no container engine could start here (dockerd: {tail.strip().splitlines()[-1:]})")
    print(tail)
    sys.exit(0)


def stop_dockerd(proc):
    if proc is None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def seed_ccache():
    """On a fresh machine (no image of ours yet: the layer cache and BuildKit's ccache mount are
    empty), fills the build stage's ccache mount from the host's ccache, which scripts/test.sh
    filled earlier in CI (deploy/ci/ccache_seed.Dockerfile). The image's build step does not see
    the seed in its cache key, so later runs' layer cache works as before. Returns what it says."""
    if run("docker", "image", "inspect", IMAGE, check_rc=False).returncode == 0:
        return "none (the image exists: the cache mount is warm)"
    if not any(HOST_CCACHE.glob("[0-9a-f]")):
        return f"none ({HOST_CCACHE} is empty)"
    start = time.time()
    run("docker", "build", "--no-cache", "--progress=plain", "-f", str(ROOT / "deploy/ci/ccache_seed.Dockerfile"),
        "--build-arg", f"BASE={BASE}", str(HOST_CCACHE), timeout=600, log=LOGS / "image_test.seed.log")
    mb = [l.split()[-2] for l in open(LOGS / "image_test.seed.log") if l.rstrip().endswith("/root/.cache/ccache")]
    return f"{mb[-1] if mb else '?'} MB from {HOST_CCACHE} ({time.time() - start:.0f} s)"


def http(port, path, body=None, timeout=60):
    """(status, body text) of a GET, or a POST of JSON body."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return None, str(e)


def wait_health(port, timeout=90):
    """Seconds until /health answered 200, or None."""
    start = time.time()
    while time.time() - start < timeout:
        if http(port, "/health", timeout=2)[0] == 200:
            return time.time() - start
        time.sleep(0.1)
    return None


def grpc_health(port):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as e:
            return str(e.code())


def check_completion(port, prefix):
    status, body = http(port, "/v1/completions", {"model": MODEL, "prompt": "The capital of France is",
                                                  "max_tokens": 8, "temperature": 0})
    ok = status == 200 and json.loads(body)["usage"]["completion_tokens"] > 0
    text = json.loads(body)["choices"][0]["text"] if ok else body[:300]
    check(f"{prefix}completion", ok, f"HTTP {status}: {text!r}")


def check_streamed_chat(port):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", headers={"Content-Type": "application/json"},
        data=json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}],
                         "max_tokens": 8, "stream": True}).encode())
    events, text = [], ""
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            kind = r.headers.get("Content-Type", "")
            for line in r:
                line = line.decode().strip()
                if line.startswith("data: "):
                    events.append(line[6:])
    except OSError as e:
        return check("streamed chat completion", False, str(e))
    chunks = [json.loads(e) for e in events if e != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices"))
    check("streamed chat completion", kind.startswith("text/event-stream") and events[-1:] == ["[DONE]"]
          and len(chunks) > 1 and text, f"{len(chunks)} chunks, {text!r}")


def container_state(name):
    return json.loads(run("docker", "inspect", "-f", "{{json .State}}", name).stdout)


def process_uid(name):
    """The real, effective, saved and filesystem user ids of the container's main process, as the
    host's /proc has them."""
    pid = container_state(name)["Pid"]
    status = pathlib.Path(f"/proc/{pid}/status").read_text()
    return [int(x) for x in next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1:]]


def host_port(name, port):
    return int(run("docker", "port", name, f"{port}/tcp").stdout.splitlines()[0].rsplit(":", 1)[1])


def test_image(model_dir):
    name = "stemserve-image-test"
    run("docker", "rm", "-f", name, check_rc=False)
    t0 = time.time()
    run("docker", "run", "-d", "--name", name, "-p", "127.0.0.1::8000", "-p", "127.0.0.1::50051",
        "-v", f"{model_dir}:/models/{MODEL}:ro", IMAGE)
    try:
        http_port, grpc_port = host_port(name, 8000), host_port(name, 50051)
        up = wait_health(http_port)
        if up is not None:
            figures["start"] = time.time() - t0
        if not check("/health answers 200", up is not None, f"{time.time() - t0:.1f} s after docker run"):
            return
        status, body = http(http_port, "/v1/models")
        ids = [m["id"] for m in json.loads(body)["data"]] if status == 200 else []
        check("/v1/models", MODEL in ids, f"HTTP {status}: {ids}")
        check_completion(http_port, "")
        check_streamed_chat(http_port)
        serving = grpc_health(grpc_port)
        check("gRPC health", serving == "SERVING", serving)
        uids = process_uid(name)
        check("runs as non-root", uids == [UID] * 4, f"uids {uids}")
        # The image's own HEALTHCHECK (interval 15 s: the first check passes about then).
        deadline = time.time() + 60
        while time.time() < deadline and container_state(name).get("Health", {}).get("Status") == "starting":
            time.sleep(1)
        health = container_state(name).get("Health", {})
        check("HEALTHCHECK healthy", health.get("Status") == "healthy",
              f"{health.get('Status')} {time.time() - t0:.0f} s after docker run")
        start = time.time()
        stopped = run("docker", "stop", "-t", str(STOP_TIMEOUT), name, check_rc=False, timeout=STOP_TIMEOUT + 30)
        took = time.time() - start
        state = container_state(name)
        check("docker stop: exit 0 within the shutdown timeout",
              stopped.returncode == 0 and state["ExitCode"] == 0 and took < STOP_TIMEOUT,
              f"exit code {state['ExitCode']} after {took:.1f} s (timeout {STOP_TIMEOUT} s)")
    finally:
        logs = run("docker", "logs", name, check_rc=False).stdout
        (LOGS / "image_test.server.log").write_text(logs)
        run("docker", "rm", "-f", name, check_rc=False)


def port_free(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_compose(model_dir):
    compose = ["docker-compose", "-f", str(ROOT / "deploy" / "compose.yaml"), "-p", "stemserve-ci",
               "--profile", "cpu"]
    env = dict(ENV, STEMSERVE_MODELS=str(model_dir.parent), STEMSERVE_MODEL_NAME=MODEL)
    busy = [p for p in (8000, 50051) if not port_free(p)]
    if not check("compose: host ports 8000 and 50051 free", not busy, f"in use: {busy}" if busy else ""):
        return
    up = subprocess.run([*compose, "up", "-d", "--no-build", "stemserve-cpu"], env=env, capture_output=True,
                        text=True, timeout=120)
    try:
        if not check("docker-compose up", up.returncode == 0, "" if up.returncode == 0 else (up.stdout + up.stderr)[-800:]):
            return
        ready = wait_health(8000)
        check("compose: /health answers 200", ready is not None, f"{ready or 0:.1f} s after up")
        if ready is not None:
            check_completion(8000, "compose: ")
            serving = grpc_health(50051)
            check("compose: gRPC health", serving == "SERVING", serving)
    finally:
        logs = subprocess.run([*compose, "logs", "--no-color"], env=env, capture_output=True, text=True, timeout=60)
        (LOGS / "image_test.compose.log").write_text(logs.stdout + logs.stderr)
        down = subprocess.run([*compose, "down", "--volumes"], env=env, capture_output=True, text=True, timeout=120)
        check("docker-compose down", down.returncode == 0, "" if down.returncode == 0 else (down.stdout + down.stderr)[-800:])


def main():
    t_start = time.time()
    LOGS.mkdir(parents=True, exist_ok=True)
    run(str(ROOT / "deploy" / "ci" / "install_tools.sh"), timeout=600)
    daemon = start_dockerd()
    try:
        start = time.time()
        made = run(str(ROOT / "deploy" / "ci" / "make_base.sh"), BASE, env=dict(ENV, DOCKER=DOCKER), timeout=600)
        say(f"{made.stdout.strip().splitlines()[-1]} ({time.time() - start:.0f} s)")
        say(f"ccache seed: {seed_ccache()}")
        start = time.time()
        build = run("docker", "build", "--progress=plain", "-f", "deploy/Dockerfile",
                    "--build-arg", f"BUILD_BASE={BASE}", "--build-arg", f"RUNTIME_BASE={BASE}",
                    "--build-arg", "DEVICE=cpu", "--build-arg", f"STEM_JOBS={os.cpu_count()}",
                    "-t", IMAGE, ".", cwd=ROOT, timeout=3600, check_rc=False, log=LOGS / "image_test.build.log")
        figures["build"] = time.time() - start
        for line in open(LOGS / "image_test.build.log"):  # the build stage's ccache figures
            if " ccache: " in line and ("Hits" in line or "Misses" in line):
                say(line.split(" ccache: ", 1)[1].strip())
        if not check("docker build", build.returncode == 0,
                     f"{figures['build']:.0f} s, log {LOGS / 'image_test.build.log'}"):
            print(open(LOGS / "image_test.build.log").read()[-4000:])
            return
        # Old images' layers go; the ccache mount and the latest layers stay (most recently used).
        run("docker", "image", "prune", "-f", check_rc=False)
        run("docker", "builder", "prune", "-f", "--keep-storage", "8GB", check_rc=False)
        size = int(run("docker", "image", "inspect", "-f", "{{.Size}}", IMAGE).stdout) / 1e6
        figures["image"] = size
        check("image size", size < MAX_IMAGE_MB, f"{IMAGE}: {size:.0f} MB (limit {MAX_IMAGE_MB} MB)")
        model_dir = pathlib.Path(os.environ.get("STEM_TEST_MODEL", ROOT / "models" / "cache" / MODEL)).resolve()
        if not (model_dir / "model.safetensors").exists():
            run(str(ROOT / "models" / "prepare" / "prepare_default_model.sh"), timeout=900)
        test_image(model_dir)
        test_compose(model_dir)
    except Exception as e:  # a step that could not run is a failed check, and the rest is reported
        check("the test ran to its end", False, str(e))
    finally:
        stop_dockerd(daemon)
        passed = sum(1 for r in results if r[1])
        failed = len(results) - passed
        f = figures
        say(f"{passed} passed, {failed} failed; image {f.get('image', 0):.0f} MB; build {f.get('build', 0):.0f} s; "
            f"start {f.get('start', 0):.1f} s; total {time.time() - t_start:.0f} s")
        sys.exit(1 if failed or not results else 0)


if __name__ == "__main__":
    main()
