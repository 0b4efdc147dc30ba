"""Fixtures for the deployment tests: the parsed Dockerfile, compose file and Kubernetes manifests,
the real binary's `serve --help`, and `launch` (container_launch.py)."""
import re
import subprocess

import pytest
import yaml

from container_launch import Launch, stemserve_binary
from deploy_files import DOCKERFILE, K8S, ROOT, parse_dockerfile


@pytest.fixture(scope="session")
def stages():
    return parse_dockerfile(DOCKERFILE)


@pytest.fixture(scope="session")
def runtime(stages):
    """The stage `docker build` makes by default: the last one."""
    return stages[-1]


@pytest.fixture(scope="session")
def compose():
    return yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())


@pytest.fixture(scope="session")
def k8s():
    """Every Kubernetes object under deploy/k8s, by (kind, name), with the file it came from."""
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "apiVersion" in doc and "kind" in doc and doc["kind"] != "Kustomization":
                objects[(doc["kind"], doc["metadata"]["name"])] = dict(doc, _file=path.name)
    return objects


@pytest.fixture(scope="session")
def serve_help():
    """`stemserve serve --help` of the real binary: the flags and their STEMSERVE_* names."""
    out = subprocess.run([str(stemserve_binary()), "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="session")
def env_names(serve_help):
    """Every STEMSERVE_* variable `stemserve serve` reads: its flags' and the global --log-level's."""
    top = subprocess.run([str(stemserve_binary()), "--help"], capture_output=True, text=True, timeout=30).stdout
    return set(re.findall(r"Env:(STEMSERVE_\w+)", serve_help + top))


@pytest.fixture(scope="session")
def launch():
    return Launch()
