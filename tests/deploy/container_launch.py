"""Runs a container's command line (entrypoint, arguments, environment) outside any container,
against the default model, and probes it with container_probe.py.

Two things differ from a real container, and only these: /models/<name> is the local
models/cache/<name> (STEM_TEST_MODEL's folder when set), and STEMSERVE_DEVICE is cpu (no GPU
here). The binary is $STEMSERVE_BIN (CTest sets it), else a build folder's, found as `stemserve`
on PATH as the entrypoint names it. The server runs in a network namespace of its own
(`unshare -rn`) when the machine allows one, so it binds the ports the files name; otherwise on
free ports, with the checks' ports mapped to them (STEM_DEPLOY_NO_NETNS=1 forces that).
"""
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

from deploy_files import ROOT

PROBE = pathlib.Path(__file__).with_name("container_probe.py")


def stemserve_binary():
    if os.environ.get("STEMSERVE_BIN"):
        return pathlib.Path(os.environ["STEMSERVE_BIN"])
    for build in ("build-test", "build", "build-deploy"):
        p = ROOT / build / "server" / "stemserve"
        if p.exists():
            return p
    pytest.skip("no stemserve binary (set STEMSERVE_BIN or build first)")


def local_model_dir():
    """Where /models is on this machine: the folder that holds the default model."""
    model = pathlib.Path(os.environ.get("STEM_TEST_MODEL", ROOT / "models/cache/SmolLM2-135M-Instruct"))
    return model.parent


def _netns_ok():
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launch:
    """Runs container command lines and returns container_probe.py's reports."""

    def __init__(self):
        self.netns = _netns_ok() and not os.environ.get("STEM_DEPLOY_NO_NETNS")
        self.binary = stemserve_binary()

    def container_env(self, env):
        """The environment the server sees: the container's, /models mapped, device cpu."""
        out = {"PATH": f"{self.binary.parent}:/usr/local/bin:/usr/bin:/bin", "HOME": tempfile.gettempdir()}
        out.update(env)
        model = out.get("STEMSERVE_MODEL", "")
        if model.startswith("/models/"):
            out["STEMSERVE_MODEL"] = str(local_model_dir() / model[len("/models/"):])
        if not (pathlib.Path(out.get("STEMSERVE_MODEL", "")) / "model.safetensors").exists():
            pytest.skip(f"model {out.get('STEMSERVE_MODEL')} not prepared (scripts/test.sh prepares the default)")
        out["STEMSERVE_DEVICE"] = "cpu"
        return out

    def __call__(self, argv, env, checks):
        """argv and env as the container has them; checks with container ports (see the probe)."""
        env = self.container_env(env)
        http_port = int(env.get("STEMSERVE_PORT", 8000))
        if not self.netns:  # ports of our own: remap the container's to free ones
            grpc_port = int(env.get("STEMSERVE_GRPC_PORT", 50051))
            mapping = {http_port: _free_port(), grpc_port: _free_port()}
            env["STEMSERVE_PORT"], env["STEMSERVE_GRPC_PORT"] = str(mapping[http_port]), str(mapping[grpc_port])
            checks = [self._remap(c, mapping) for c in checks]
            http_port = mapping[http_port]
        spec = {"argv": argv, "env": env, "netns": self.netns, "http_port": http_port, "checks": checks,
                "timeout": 60}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        try:
            cmd = [sys.executable, str(PROBE), f.name]
            if self.netns:
                cmd = ["unshare", "-rn", *cmd]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        finally:
            os.unlink(f.name)
        assert out.returncode == 0, f"container_probe.py failed:\n{out.stdout}\n{out.stderr}"
        report = json.loads(out.stdout)
        assert report["ready"], f"the server never answered 200 on /health:\n{report['log']}"
        return report

    @staticmethod
    def _remap(check, mapping):
        check = dict(check)
        if "port" in check:
            check["port"] = mapping.get(check["port"], check["port"])
        if "argv" in check:
            argv = []
            for word in check["argv"]:
                for old, new in mapping.items():
                    word = word.replace(f":{old}/", f":{new}/")
                argv.append(word)
            check["argv"] = argv
        return check


def port_checks(env, ports, prefix):
    """A check per container port: /health on the HTTP port, gRPC health on the gRPC one. A port
    that is neither of the server's fails the test."""
    http_port = int(env.get("STEMSERVE_PORT", 8000))
    grpc_port = int(env.get("STEMSERVE_GRPC_PORT", 50051))
    checks = []
    for port in ports:
        assert port in (http_port, grpc_port), \
            f"{prefix}: port {port} is neither STEMSERVE_PORT ({http_port}) nor STEMSERVE_GRPC_PORT ({grpc_port})"
        if port == http_port:
            checks.append({"id": f"{prefix} port {port}", "type": "http", "port": port, "path": "/health"})
        else:
            checks.append({"id": f"{prefix} port {port}", "type": "grpc_health", "port": port})
    return checks


def assert_port_checks(report, prefix):
    for cid, result in report["results"].items():
        if cid.startswith(f"{prefix} port "):
            assert result["status"] in (200, "SERVING"), f"{cid}: {result}"
