"""Runs one container's command line outside a container and probes it; prints a JSON report.

Usage: container_probe.py SPEC.json  (container_launch.py writes the spec and runs this,
inside a network namespace of its own when it can: `unshare -rn`. There the server binds the very
ports the Dockerfile and manifests name, 8000 and 50051, without meeting anything else on this
machine, and nothing outside the namespace can reach it.)

Spec: {"argv": [...], "env": {...}, "netns": bool, "http_port": int, "timeout": s,
       "checks": [{"id": str, "type": "http", "port": int, "path": str}
                  | {"id": str, "type": "grpc_health", "port": int}
                  | {"id": str, "type": "command", "argv": [...]}]}
Report: {"ready": bool, "log": str, "exit_code": int, "results": {id: {...}}}
"""
import fcntl
import json
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def loopback_up():
    """`ip link set lo up` without iproute2: a new network namespace starts with lo down."""
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))


def http_get(port, path, timeout=5):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return {"status": r.status, "body": r.read().decode(errors="replace")}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": e.read().decode(errors="replace")}
    except OSError as e:
        return {"status": None, "error": str(e)}


def grpc_health(port):
    try:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError:  # no grpcio: at least the port accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return {"status": "CONNECTED"}
        except OSError as e:
            return {"status": None, "error": str(e)}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            return {"status": health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}
        except grpc.RpcError as e:
            return {"status": None, "error": str(e.code())}


def run_command(argv, env):
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    return {"returncode": p.returncode, "output": (p.stdout + p.stderr)[-2000:]}


def main():
    spec = json.loads(open(sys.argv[1]).read())
    if spec.get("netns"):
        loopback_up()
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(spec["argv"], env=spec["env"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    report = {"ready": False, "results": {}}
    try:
        deadline = time.time() + spec.get("timeout", 60)
        while time.time() < deadline and proc.poll() is None:
            if http_get(spec["http_port"], "/health", timeout=2).get("status") == 200:
                report["ready"] = True
                break
            time.sleep(0.1)
        if report["ready"]:
            for check in spec["checks"]:
                if check["type"] == "http":
                    result = http_get(check["port"], check["path"])
                elif check["type"] == "grpc_health":
                    result = grpc_health(check["port"])
                else:
                    result = run_command(check["argv"], spec["env"])
                report["results"][check["id"]] = result
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        report["exit_code"] = proc.returncode
        log.seek(0)
        report["log"] = log.read()[-6000:]
    print(json.dumps(report))


if __name__ == "__main__":
    main()
