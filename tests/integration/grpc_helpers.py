"""The gRPC test client: Python code generated from proto/stemserve/v1/*.proto at test time
(grpcio-tools' protoc, into a temporary folder; nothing generated is committed), the messages of
our grpc.reflection.v1 (proto/grpc/reflection/v1) generated the same way, plus helpers."""
import importlib
import importlib.util
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


_reflection_v1 = None


def reflection_v1_pb2():
    """The messages of proto/grpc/reflection/v1/reflection.proto, generated once per test session.
    grpcio-reflection 1.85.1 has a client for v1alpha only. Loaded from its file under a name of
    its own: as the package path grpc.reflection.v1 it would sit inside grpcio's `grpc`."""
    global _reflection_v1
    if _reflection_v1 is None:
        from grpc_tools import protoc

        out = pathlib.Path(tempfile.mkdtemp(prefix="stemserve-grpc-reflection-py-"))
        proto = "grpc/reflection/v1/reflection.proto"
        rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", proto])
        assert rc == 0, f"protoc failed on {proto}"
        spec = importlib.util.spec_from_file_location("stemserve_test_reflection_v1_pb2",
                                                      out / "grpc/reflection/v1/reflection_pb2.py")
        _reflection_v1 = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_reflection_v1)
    return _reflection_v1


REFLECTION_V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def reflection_v1_info(ch):
    """The bidi-streaming call grpc.reflection.v1.ServerReflection/ServerReflectionInfo on `ch`."""
    m = reflection_v1_pb2()
    return ch.stream_stream(REFLECTION_V1_METHOD, request_serializer=m.ServerReflectionRequest.SerializeToString,
                            response_deserializer=m.ServerReflectionResponse.FromString)


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
