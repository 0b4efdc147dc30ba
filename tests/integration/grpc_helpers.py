"""The gRPC test client: Python code generated from proto/stemserve/v1/*.proto at test time
(grpcio-tools' protoc, into a temporary folder; nothing generated is committed), plus helpers."""
import importlib
import pathlib
import sys
import tempfile
import time

import grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "proto"

_generated = None


def stubs():
    """(stemserve_pb2, stemserve_pb2_grpc), generated once per test session."""
    global _generated
    if _generated is None:
        from grpc_tools import protoc
        import grpc_tools

        out = tempfile.mkdtemp(prefix="stemserve-grpc-py-")
        include = pathlib.Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
        protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("stemserve/v1/*.proto"))
        rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}",
                          f"--grpc_python_out={out}", *protos])
        assert rc == 0, f"protoc failed on {protos}"
        sys.path.insert(0, out)
        _generated = (importlib.import_module("stemserve.v1.stemserve_pb2"),
                      importlib.import_module("stemserve.v1.stemserve_pb2_grpc"))
    return _generated


def channel(target):
    ch = grpc.insecure_channel(target)
    grpc.channel_ready_future(ch).result(timeout=30)
    return ch


def collect(responses):
    """Joins a Generate stream: {index: {"text", "token_ids", "logprobs", "last"}} in arrival order."""
    seqs = {}
    for r in responses:
        s = seqs.setdefault(r.index, {"text": "", "token_ids": [], "logprobs": [], "last": None})
        s["text"] += r.text
        s["token_ids"] += list(r.token_ids)
        s["logprobs"] += list(r.logprobs)
        if r.finish_reason:
            s["last"] = r
    return seqs


def wait_until(predicate, timeout=20, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout} s")
