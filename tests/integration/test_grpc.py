"""The gRPC API against the real server, with a grpcio client generated from our proto at test
time: Generate streams the same greedy text as the HTTP API, Tokenize/Detokenize/ModelInfo,
health and reflection (v1 and v1alpha), a cancelled call or an expired deadline frees the request's KV pages,
a full queue is RESOURCE_EXHAUSTED, bad requests get their status code, the API key,
response_format's JSON schema and structured_outputs (regex, choice, json) enforced, and tools
(named, required, auto with --tool-call-parser, results fed back) with calls in tool_calls."""
import concurrent.futures
import signal

import grpc
import httpx
import pytest

from grpc_helpers import channel, collect, reflection_v1_info, reflection_v1_pb2, stubs, wait_until

pb, pb_grpc = stubs()
GREEDY = pb.SamplingParams(temperature=0)
LONG = dict(text="Once upon a time", max_tokens=400, ignore_eos=True)


@pytest.fixture(scope="module")
def stub(server):
    ch = channel(server.grpc_target)
    yield pb_grpc.StemserveStub(ch)
    ch.close()


def http_completion(server, body):
    r = httpx.post(server.url + body.pop("_path", "/v1/completions"), json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_generate_streams_the_http_answer(server, stub):
    prompt = "The capital of France is"
    seqs = collect(stub.Generate(pb.GenerateRequest(text=prompt, max_tokens=8, sampling=GREEDY, ignore_eos=True),
                                 timeout=60))
    http = http_completion(server, {"prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True})
    s = seqs[0]
    assert s["text"] == http["choices"][0]["text"] and s["text"]
    assert len(s["token_ids"]) == 8
    assert s["last"].finish_reason == pb.FINISH_REASON_LENGTH
    assert s["last"].usage.prompt_tokens == http["usage"]["prompt_tokens"]
    assert s["last"].usage.completion_tokens == 8
    # The same request as token ids gives the same tokens.
    ids = stub.Tokenize(pb.TokenizeRequest(text=prompt)).token_ids
    again = collect(stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids), max_tokens=8, sampling=GREEDY,
                                                     ignore_eos=True), timeout=60))
    assert again[0]["token_ids"] == s["token_ids"]


def test_generate_chat_equals_http_chat(server, stub, model_name):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = pb.ChatMessages(messages=[pb.ChatMessage(**m) for m in messages])
    seqs = collect(stub.Generate(pb.GenerateRequest(model=model_name, chat=chat, max_tokens=6, sampling=GREEDY),
                                 timeout=60))
    http = http_completion(server, {"_path": "/v1/chat/completions", "messages": messages, "max_tokens": 6,
                                    "temperature": 0})
    assert seqs[0]["text"] == http["choices"][0]["message"]["content"]
    assert seqs[0]["last"].usage.prompt_tokens == http["usage"]["prompt_tokens"]


def test_generate_stop_string_logprobs_and_n(stub):
    req = pb.GenerateRequest(text="1, 2, 3, 4,", max_tokens=8, sampling=pb.SamplingParams(temperature=0.8, seed=7),
                             n=2, logprobs=True, top_logprobs=2, stop=["7"], sparse_prefill="dense")
    seqs = collect(stub.Generate(req, timeout=60))
    assert sorted(seqs) == [0, 1]
    for s in seqs.values():
        assert len(s["logprobs"]) == len(s["token_ids"]) > 0
        for tid, lp in zip(s["token_ids"], s["logprobs"]):
            assert lp.token_id == tid and lp.logprob <= 0
            assert len(lp.top_logprobs) == 2 and lp.top_logprobs[0].logprob >= lp.top_logprobs[1].logprob
        assert "7" not in s["text"]
        if s["last"].finish_reason == pb.FINISH_REASON_STOP:
            assert s["last"].stop_reason == "7"
    # A seed repeats.
    assert collect(stub.Generate(req, timeout=60))[1]["token_ids"] == seqs[1]["token_ids"]


def test_tokenize_detokenize_round_trip_and_model_info(server, stub, model_name):
    text = "Hello world, ünïcödé!"
    tok = stub.Tokenize(pb.TokenizeRequest(text=text))
    http = httpx.post(server.url + "/tokenize", json={"prompt": text}, timeout=10).json()
    assert list(tok.token_ids) == http["tokens"] and tok.count == len(http["tokens"])
    assert stub.Detokenize(pb.DetokenizeRequest(token_ids=tok.token_ids, skip_special_tokens=True)).text == text
    info = stub.ModelInfo(pb.ModelInfoRequest())
    assert info.name == model_name
    assert info.architecture == "LlamaForCausalLM" and info.model_type == "llama"
    assert info.context_length == 512 and info.vocab_size == 49152 and info.device == "cpu"
    assert tok.max_model_len == 512 and list(info.eos_token_ids)


def test_health_and_reflection(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    ch = channel(server.grpc_target)
    health = health_pb2_grpc.HealthStub(ch)
    for service in ("", "stemserve.v1.Stemserve"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(ch)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="stemserve.v1.Stemserve"),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health")]
    answers = list(reflection.ServerReflectionInfo(iter(requests), timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert names == SERVICES
    # The schemas, for tools: every listed service's (reflection v1's and health's are ours).
    assert answers[1].file_descriptor_response.file_descriptor_proto
    assert answers[2].file_descriptor_response.file_descriptor_proto
    ch.close()


# Every service the server has: ours, health, and reflection in both versions.
SERVICES = {"stemserve.v1.Stemserve", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"}


def shape(message):
    """A message's fields as the wire sees them: name, number, type, repeated, oneof, message type."""
    return sorted((f.name, f.number, f.type, f.is_repeated, f.containing_oneof.name if f.containing_oneof else None,
                   f.message_type.name if f.message_type else None) for f in message.fields)


def load_files(answers):
    """A fresh descriptor pool over the files of `answers` (FileDescriptorProto bytes); every file
    a file imports must be among them."""
    from google.protobuf import descriptor_database, descriptor_pb2, descriptor_pool
    files = [descriptor_pb2.FileDescriptorProto.FromString(raw)
             for a in answers for raw in a.file_descriptor_response.file_descriptor_proto]
    names = [f.name for f in files]
    assert len(names) == len(set(names)), f"a file sent twice on one stream: {names}"
    for f in files:
        assert set(f.dependency) <= set(names), (f.name, list(f.dependency), names)
    db = descriptor_database.DescriptorDatabase()
    for f in files:
        db.Add(f)
    return descriptor_pool.DescriptorPool(db), names


def test_reflection_v1(server):
    """grpc.reflection.v1 (ours; current clients ask for it first): every kind of request on one
    stream, each answered in turn with its request and host echoed."""
    r = reflection_v1_pb2()
    v1alpha = "grpc.reflection.v1alpha.ServerReflection"
    ch = channel(server.grpc_target)
    info = reflection_v1_info(ch)
    requests = [
        r.ServerReflectionRequest(host="localhost", list_services=""),
        r.ServerReflectionRequest(file_containing_symbol="stemserve.v1.Stemserve"),
        r.ServerReflectionRequest(file_containing_symbol=v1alpha + ".ServerReflectionInfo"),
        r.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health.Check"),
        r.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
        # The same file as the service's: sent already on this stream, so no files again.
        r.ServerReflectionRequest(file_containing_symbol="stemserve.v1.GenerateRequest"),
        r.ServerReflectionRequest(file_by_filename="stemserve/v1/stemserve.proto"),
        r.ServerReflectionRequest(file_containing_symbol="stemserve.v1.NoSuchThing"),
        r.ServerReflectionRequest(file_by_filename="no/such.proto"),
        r.ServerReflectionRequest(all_extension_numbers_of_type="stemserve.v1.NoSuchThing"),
        r.ServerReflectionRequest(all_extension_numbers_of_type="stemserve.v1.GenerateRequest"),
        r.ServerReflectionRequest(file_containing_extension=r.ExtensionRequest(
            containing_type="stemserve.v1.GenerateRequest", extension_number=100)),
        r.ServerReflectionRequest(),
    ]
    answers = list(info(iter(requests), timeout=10))
    assert len(answers) == len(requests)
    for q, a in zip(requests, answers):
        assert a.original_request == q
        assert a.valid_host == q.host
    assert answers[0].valid_host == "localhost"
    assert {s.name for s in answers[0].list_services_response.service} == SERVICES

    pool, names = load_files(answers[1:7])
    assert names[0] == "stemserve/v1/stemserve.proto"
    generate = pool.FindServiceByName("stemserve.v1.Stemserve").methods_by_name["Generate"]
    assert generate.server_streaming and not generate.client_streaming
    assert generate.input_type.full_name == "stemserve.v1.GenerateRequest"
    assert "sampling" in generate.input_type.fields_by_name
    assert generate.input_type.fields_by_name["sampling"].message_type.full_name == "stemserve.v1.SamplingParams"
    assert pool.FindServiceByName(v1alpha).methods_by_name["ServerReflectionInfo"]
    # Health's schema (ours, proto/grpc/health/v1) is grpcio-health-checking's, less the List method
    # that came after gRPC 1.51 (whose health service we run answers Check and Watch).
    from grpc_health.v1 import health_pb2
    health = pool.FindServiceByName("grpc.health.v1.Health")
    public = health_pb2.DESCRIPTOR.services_by_name["Health"].methods_by_name
    assert [m.name for m in health.methods] == ["Check", "Watch"]
    for m in health.methods:
        assert (m.input_type.full_name, m.output_type.full_name, m.client_streaming, m.server_streaming) == \
            (public[m.name].input_type.full_name, public[m.name].output_type.full_name,
             public[m.name].client_streaming, public[m.name].server_streaming), m.name
    for name in ("HealthCheckRequest", "HealthCheckResponse"):
        assert shape(pool.FindMessageTypeByName("grpc.health.v1." + name)) == \
            shape(health_pb2.DESCRIPTOR.message_types_by_name[name]), name
    status = pool.FindEnumTypeByName("grpc.health.v1.HealthCheckResponse.ServingStatus")
    assert [(v.name, v.number) for v in status.values] == \
        [(v.name, v.number) for v in health_pb2.HealthCheckResponse.ServingStatus.DESCRIPTOR.values]
    info_method = pool.FindServiceByName("grpc.reflection.v1.ServerReflection").methods_by_name["ServerReflectionInfo"]
    assert info_method.client_streaming and info_method.server_streaming
    for sent_already in answers[5:7]:
        assert sent_already.WhichOneof("message_response") == "file_descriptor_response"
        assert not sent_already.file_descriptor_response.file_descriptor_proto

    for a, what in zip(answers[7:10], ("stemserve.v1.NoSuchThing", "no/such.proto", "stemserve.v1.NoSuchThing")):
        assert a.WhichOneof("message_response") == "error_response"
        assert a.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
        assert what in a.error_response.error_message
    assert answers[10].all_extension_numbers_response.base_type_name == "stemserve.v1.GenerateRequest"
    assert list(answers[10].all_extension_numbers_response.extension_number) == []
    assert answers[11].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert answers[12].error_response.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "file_containing_symbol" in answers[12].error_response.error_message

    # A message alone, on a stream of its own: its file comes again, and resolves the message.
    alone = list(info(iter([r.ServerReflectionRequest(file_containing_symbol="stemserve.v1.GenerateRequest")]),
                      timeout=10))
    pool, names = load_files(alone)
    assert names == ["stemserve/v1/stemserve.proto"]
    assert pool.FindMessageTypeByName("stemserve.v1.GenerateRequest").fields_by_name["text"].number == \
        pb.GenerateRequest.DESCRIPTOR.fields_by_name["text"].number
    ch.close()


class ToReflectionV1:
    """A channel that sends the v1alpha reflection call to v1 instead (grpcio-reflection 1.85.1's
    client knows only v1alpha; the two versions' messages are the same on the wire)."""

    def __init__(self, ch):
        self.ch = ch

    def stream_stream(self, method, *args, **kwargs):
        assert method == "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", method
        return self.ch.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", *args, **kwargs)


def test_reflection_client_over_v1(server):
    """grpcio-reflection's own client, ProtoReflectionDescriptorDatabase, over v1: it lists the
    services and builds each one's schema in a descriptor pool, as a tool would."""
    from google.protobuf import descriptor_pool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
    ch = channel(server.grpc_target)
    db = ProtoReflectionDescriptorDatabase(ToReflectionV1(ch))
    assert set(db.get_services()) == SERVICES
    pool = descriptor_pool.DescriptorPool(db)
    tokenize = pool.FindServiceByName("stemserve.v1.Stemserve").methods_by_name["Tokenize"]
    assert tokenize.input_type.full_name == "stemserve.v1.TokenizeRequest"
    for service in SERVICES:  # as grpcurl's describe does
        assert pool.FindServiceByName(service).methods, service
    assert pool.FindMessageTypeByName("stemserve.v1.ModelInfoResponse").fields_by_name
    with pytest.raises(KeyError):
        pool.FindMessageTypeByName("stemserve.v1.NoSuchThing")
    ch.close()


def test_reflection_v1_proto_matches_the_public_definition():
    """Our proto/grpc/reflection/v1 has the messages, fields (name, number, type, repeated, oneof)
    and method of the public definition, which grpcio-reflection's v1alpha messages carry under
    another package name."""
    from grpc_reflection.v1alpha import reflection_pb2 as alpha
    ours = reflection_v1_pb2().DESCRIPTOR
    theirs = alpha.DESCRIPTOR
    assert ours.package == "grpc.reflection.v1" and theirs.package == "grpc.reflection.v1alpha"

    assert set(ours.message_types_by_name) == set(theirs.message_types_by_name)
    for name, message in ours.message_types_by_name.items():
        assert shape(message) == shape(theirs.message_types_by_name[name]), name
    (mine,) = ours.services_by_name["ServerReflection"].methods
    (public,) = theirs.services_by_name["ServerReflection"].methods
    assert (mine.name, mine.input_type.name, mine.output_type.name, mine.client_streaming, mine.server_streaming) == \
        (public.name, public.input_type.name, public.output_type.name, public.client_streaming,
         public.server_streaming) == ("ServerReflectionInfo", "ServerReflectionRequest", "ServerReflectionResponse",
                                      True, True)


def test_cancel_mid_stream_frees_pages(server, stub):
    call = stub.Generate(pb.GenerateRequest(**LONG), timeout=120)
    for i, _ in enumerate(call):
        if i == 2:
            break
    assert server.metrics()["stemserve_kv_cache_used_pages"] > 0
    call.cancel()
    server.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)
    server.wait_metric("stemserve_num_requests_running", lambda v: v == 0)


def test_deadline_mid_generation_frees_pages(server, stub):
    got = 0
    with pytest.raises(grpc.RpcError) as e:
        for _ in stub.Generate(pb.GenerateRequest(**LONG), timeout=1.5):
            got += 1
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert got < 400  # on a busy machine the deadline may pass before the first token: pages are freed either way
    server.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)


def code_of(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    assert e.value.details()
    return e.value.code(), e.value.details()


def test_full_queue_is_resource_exhausted(make_server):
    s = make_server("--max-num-seqs", "1", "--max-queue", "1")
    st = pb_grpc.StemserveStub(channel(s.grpc_target))
    calls = [st.Generate(pb.GenerateRequest(**LONG), timeout=120) for _ in range(2)]
    # One runs, one waits; the third finds the queue full.
    wait_until(lambda: (lambda m: m["stemserve_num_requests_running"] == 1 and
                        m["stemserve_num_requests_waiting"] == 1)(s.metrics()), what="one running, one waiting")
    code, details = code_of(lambda: list(st.Generate(pb.GenerateRequest(text="Hi", max_tokens=2), timeout=30)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue" in details
    for c in calls:
        c.cancel()
    s.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)
    wait_until(lambda: s.metrics()["stemserve_num_requests_waiting"] == 0, what="queue empty")
    assert collect(st.Generate(pb.GenerateRequest(text="Hi", max_tokens=2), timeout=60))[0]["last"]


def bad_utf8_generate():
    """A GenerateRequest whose text is the bytes 'caf\\xc3\\x28' (not UTF-8), which no client
    library would build: the placeholder is swapped in the encoded message."""
    raw = pb.GenerateRequest(text="cafXY", max_tokens=2).SerializeToString()
    return raw.replace(b"cafXY", b"caf\xc3\x28")


# (case, request, the field its error message starts with)
INVALID = [
    ("no prompt", pb.GenerateRequest(max_tokens=2), "prompt"),
    ("empty text", pb.GenerateRequest(text="", max_tokens=2), "text"),
    ("empty token ids", pb.GenerateRequest(token_ids=pb.TokenIds(ids=[]), max_tokens=2), "token_ids"),
    ("token id outside the vocabulary", pb.GenerateRequest(token_ids=pb.TokenIds(ids=[1, 999999])), "token_ids"),
    ("empty chat", pb.GenerateRequest(chat=pb.ChatMessages(messages=[])), "chat.messages"),
    ("prompt longer than the context", pb.GenerateRequest(text="hello " * 600), "text"),
    ("max_tokens over the limit", pb.GenerateRequest(text="Hi", max_tokens=100000), "max_tokens"),
    ("max_tokens of zero", pb.GenerateRequest(text="Hi", max_tokens=0), "max_tokens"),
    ("temperature out of range", pb.GenerateRequest(text="Hi", sampling=pb.SamplingParams(temperature=-1)),
     "temperature"),
    ("top_p out of range", pb.GenerateRequest(text="Hi", sampling=pb.SamplingParams(top_p=0)), "top_p"),
    ("top_k out of range", pb.GenerateRequest(text="Hi", sampling=pb.SamplingParams(top_k=-2)), "top_k"),
    ("min_p out of range", pb.GenerateRequest(text="Hi", sampling=pb.SamplingParams(min_p=2)), "min_p"),
    ("repetition_penalty of zero", pb.GenerateRequest(text="Hi", sampling=pb.SamplingParams(repetition_penalty=0)),
     "repetition_penalty"),
    ("presence_penalty out of range", pb.GenerateRequest(text="Hi", sampling=pb.SamplingParams(presence_penalty=3)),
     "presence_penalty"),
    ("frequency_penalty out of range",
     pb.GenerateRequest(text="Hi", sampling=pb.SamplingParams(frequency_penalty=-3)), "frequency_penalty"),
    ("n over max_num_seqs", pb.GenerateRequest(text="Hi", n=1000), "n"),
    ("top_logprobs without logprobs", pb.GenerateRequest(text="Hi", top_logprobs=3), "top_logprobs"),
    ("top_logprobs over 20", pb.GenerateRequest(text="Hi", logprobs=True, top_logprobs=21), "top_logprobs"),
    ("unknown sparse_prefill", pb.GenerateRequest(text="Hi", sparse_prefill="sparse"), "sparse_prefill"),
    ("stop token id negative", pb.GenerateRequest(text="Hi", stop_token_ids=[-3]), "stop_token_ids"),
    ("invalid UTF-8", None, None),
]


@pytest.mark.parametrize("name,request_,field", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_generate_is_invalid_argument(server, stub, name, request_, field):
    if request_ is None:
        ch = channel(server.grpc_target)
        raw = ch.unary_stream("/stemserve.v1.Stemserve/Generate", request_serializer=lambda b: b,
                              response_deserializer=pb.GenerateResponse.FromString)
        code, details = code_of(lambda: list(raw(bad_utf8_generate(), timeout=30)))
        ch.close()
    else:
        code, details = code_of(lambda: list(stub.Generate(request_, timeout=30)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    if field:  # the message names the field first: "top_p must be ...", "'text' must ...", "max_tokens: ..."
        assert details.startswith((f"{field}: ", f"{field} ", f"'{field}'")), details
    # The server is still up and serving.
    assert stub.ModelInfo(pb.ModelInfoRequest(), timeout=10).name


def test_other_bad_requests(stub):
    code, details = code_of(lambda: list(stub.Generate(pb.GenerateRequest(model="gpt-17", text="Hi"), timeout=30)))
    assert code == grpc.StatusCode.NOT_FOUND and "gpt-17" in details
    assert code_of(lambda: stub.Tokenize(pb.TokenizeRequest(model="gpt-17", text="Hi")))[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: stub.Tokenize(pb.TokenizeRequest()))[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, details = code_of(lambda: stub.Detokenize(pb.DetokenizeRequest(token_ids=[1, 999999])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "999999" in details
    # "stem" is accepted (a prompt this short is still prefilled densely).
    assert collect(stub.Generate(pb.GenerateRequest(text="Hi", max_tokens=1, sparse_prefill="stem"),
                                 timeout=60))[0]["last"]


def test_api_key(make_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    s = make_server(env={"STEMSERVE_API_KEY": "s3cret"})
    ch = channel(s.grpc_target)
    st = pb_grpc.StemserveStub(ch)
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),),
                     (("authorization", "Bearer s3cret-and-more"),)):
        for call in (lambda: st.ModelInfo(pb.ModelInfoRequest(), metadata=metadata),
                     lambda: st.Tokenize(pb.TokenizeRequest(text="Hi"), metadata=metadata),
                     lambda: list(st.Generate(pb.GenerateRequest(text="Hi", max_tokens=1), metadata=metadata))):
            code, details = code_of(call)
            assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
    ok = (("authorization", "Bearer s3cret"),)
    assert st.ModelInfo(pb.ModelInfoRequest(), metadata=ok).name
    assert collect(st.Generate(pb.GenerateRequest(text="Hi", max_tokens=1), metadata=ok))[0]["last"]
    # Health needs no key, as GET /health.
    assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest()).status == \
        health_pb2.HealthCheckResponse.SERVING
    ch.close()


def test_sigterm_drains_grpc_streams(make_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    s = make_server("--shutdown-timeout", "60")
    ch = channel(s.grpc_target)
    st = pb_grpc.StemserveStub(ch)
    call = st.Generate(pb.GenerateRequest(text="Once upon a time", max_tokens=24, ignore_eos=True), timeout=120)
    first = next(call)
    s.proc.send_signal(signal.SIGTERM)
    # Draining: health says NOT_SERVING and new calls are refused, while the stream goes on.
    health = health_pb2_grpc.HealthStub(ch)
    wait_until(lambda: health.Check(health_pb2.HealthCheckRequest()).status ==
               health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING")
    code, _ = code_of(lambda: list(st.Generate(pb.GenerateRequest(text="Hi", max_tokens=1), timeout=10)))
    assert code == grpc.StatusCode.UNAVAILABLE
    rest = collect(call)[0]
    assert len(first.token_ids) + len(rest["token_ids"]) == 24
    assert rest["last"].finish_reason == pb.FINISH_REASON_LENGTH
    assert s.proc.wait(timeout=60) == 0
    ch.close()


def test_grpc_port_minus_one_turns_grpc_off(make_server):
    s = make_server("--grpc-port", "-1", "--max-num-seqs", "1")
    assert s.grpc_target is None
    assert "gRPC" not in s.log_text()


def test_concurrent_grpc_and_http_streams_agree(server, stub, client, model_name):
    prompts = ["The capital of France is", "1, 2, 3, 4,", "def fibonacci(n):", "Water boils at"]
    alone = {p: http_completion(server, {"prompt": p, "max_tokens": 6, "temperature": 0,
                                         "ignore_eos": True})["choices"][0]["text"] for p in prompts}

    def via_grpc(p):
        return collect(stub.Generate(pb.GenerateRequest(text=p, max_tokens=6, sampling=GREEDY, ignore_eos=True),
                                     timeout=120))[0]["text"]

    def via_http(p):
        return client.completions.create(model=model_name, prompt=p, max_tokens=6, temperature=0,
                                         extra_body={"ignore_eos": True}).choices[0].text

    jobs = [(p, fn) for p in prompts for fn in (via_grpc, via_http)]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda j: (j[0], j[1](j[0])), jobs))
    for p, text in results:
        assert text == alone[p], p
    server.wait_metric("stemserve_kv_cache_used_pages", lambda v: v == 0)


def test_generate_with_a_json_schema(stub):
    import json

    import jsonschema
    schema = {"type": "object", "additionalProperties": False, "required": ["city", "sunny"],
              "properties": {"city": {"type": "string"}, "sunny": {"type": "boolean"}}}
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="The weather in Paris as JSON.")])
    rf = pb.ResponseFormat(type="json_schema", json_schema=json.dumps(schema))
    seqs = collect(stub.Generate(pb.GenerateRequest(chat=chat, max_tokens=64, sampling=GREEDY, response_format=rf),
                                 timeout=120))
    assert seqs[0]["last"].finish_reason == pb.FINISH_REASON_STOP
    jsonschema.validate(json.loads(seqs[0]["text"]), schema)
    bad = pb.ResponseFormat(type="json_schema", json_schema='{"type": "string", "format": "date"}')
    with pytest.raises(grpc.RpcError) as e:
        collect(stub.Generate(pb.GenerateRequest(chat=chat, max_tokens=4, response_format=bad), timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "format" in e.value.details() and e.value.details().startswith("response_format")


def test_generate_with_structured_outputs(stub):
    import json
    import re

    import jsonschema
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Give me a phone number.")])
    phone = r"\(\d{3}\) \d{3}-\d{4}"
    for seed in range(3):
        seqs = collect(stub.Generate(pb.GenerateRequest(
            chat=chat, max_tokens=32, sampling=pb.SamplingParams(temperature=1.0, seed=seed),
            structured_outputs=pb.StructuredOutputs(regex=phone)), timeout=120))
        assert seqs[0]["last"].finish_reason == pb.FINISH_REASON_STOP
        assert re.fullmatch(phone, seqs[0]["text"]), seqs[0]["text"]
    options = ["red", "green", "blue"]
    seqs = collect(stub.Generate(pb.GenerateRequest(
        text="My favourite colour is", max_tokens=8, n=2, sampling=pb.SamplingParams(temperature=1.0, seed=1),
        structured_outputs=pb.StructuredOutputs(choice=pb.Choices(values=options))), timeout=120))
    assert all(seqs[i]["text"] in options for i in range(2))
    schema = {"type": "object", "required": ["id"], "additionalProperties": False,
              "properties": {"id": {"type": "string", "pattern": "^[a-f0-9]{8}$"}}}
    seqs = collect(stub.Generate(pb.GenerateRequest(
        chat=chat, max_tokens=32, sampling=GREEDY, structured_outputs=pb.StructuredOutputs(json=json.dumps(schema))),
        timeout=120))
    jsonschema.validate(json.loads(seqs[0]["text"]), schema)
    for so, text in [(pb.StructuredOutputs(regex="a(?=b)"), "lookahead"),
                     (pb.StructuredOutputs(grammar='root ::= "a" | x'), "'x' is used but not defined"),
                     (pb.StructuredOutputs(choice=pb.Choices()), "at least one"),
                     (pb.StructuredOutputs(), "one of")]:
        code, details = code_of(lambda: list(stub.Generate(pb.GenerateRequest(chat=chat, max_tokens=4,
                                                                              structured_outputs=so), timeout=30)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.lstrip("'").startswith("structured_outputs") and text in details, details


WEATHER = pb.Tool(name="get_weather", description="The current weather in a city", parameters=(
    '{"type": "object", "additionalProperties": false, "required": ["city"], '
    '"properties": {"city": {"type": "string"}}}'))
NOW = pb.Tool(name="now", parameters='{"type": "object", "properties": {}, "additionalProperties": false}')


def test_generate_with_tools(stub):
    import json

    import jsonschema
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="What is the weather in Paris?")])
    # A named function: its arguments, finish reason stop (as OpenAI's).
    seqs = collect(stub.Generate(pb.GenerateRequest(chat=chat, max_tokens=64, sampling=GREEDY, tools=[WEATHER, NOW],
                                                    tool_choice=pb.ToolChoice(function="get_weather")), timeout=120))
    last = seqs[0]["last"]
    assert last.finish_reason == pb.FINISH_REASON_STOP
    assert seqs[0]["text"] == ""
    assert len(last.tool_calls) == 1 and last.tool_calls[0].name == "get_weather"
    assert last.tool_calls[0].id.startswith("call_")
    jsonschema.validate(json.loads(last.tool_calls[0].arguments), json.loads(WEATHER.parameters))
    # required: one call or more, finish reason tool_calls; parallel_tool_calls false: exactly one.
    seqs = collect(stub.Generate(pb.GenerateRequest(chat=chat, max_tokens=128, sampling=GREEDY, tools=[WEATHER, NOW],
                                                    tool_choice=pb.ToolChoice(mode="required"),
                                                    parallel_tool_calls=False), timeout=120))
    last = seqs[0]["last"]
    assert last.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert len(last.tool_calls) == 1 and last.tool_calls[0].name in ("get_weather", "now")
    # The call and its result fed back: the model answers in text.
    call = last.tool_calls[0]
    history = pb.ChatMessages(messages=[
        *chat.messages, pb.ChatMessage(role="assistant", tool_calls=[call]),
        pb.ChatMessage(role="tool", tool_call_id=call.id, content="22 C and sunny")])
    seqs = collect(stub.Generate(pb.GenerateRequest(chat=history, max_tokens=8, sampling=GREEDY, tools=[WEATHER, NOW],
                                                    tool_choice=pb.ToolChoice(mode="none")), timeout=120))
    assert seqs[0]["last"].finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert not seqs[0]["last"].tool_calls
    # Bad definitions: INVALID_ARGUMENT naming the proto's field.
    for req, field in [
        (pb.GenerateRequest(chat=chat, tools=[pb.Tool(name="bad name")], tool_choice=pb.ToolChoice(mode="required")),
         "tools[0].name"),
        (pb.GenerateRequest(chat=chat, tools=[pb.Tool(name="f", parameters="{")]), "tools[0].parameters"),
        (pb.GenerateRequest(chat=chat, tools=[WEATHER], tool_choice=pb.ToolChoice(function="nope")), "tool_choice"),
        (pb.GenerateRequest(text="Hi", tools=[WEATHER]), "tools"),
        (pb.GenerateRequest(chat=chat, tools=[WEATHER]), "tools"),  # auto: SmolLM2's template has no call format
        (pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="tool", content="x")])),
         "chat.messages[0].tool_call_id"),
    ]:
        code, details = code_of(lambda: list(stub.Generate(req, timeout=30)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith(field) or details.startswith("'" + field), details


def test_generate_with_tools_auto(make_server):
    """tool_choice auto with a parser: the plumbing (SmolLM2 does not call tools of its own accord; reading
    calls from text is tested in C++)."""
    s = make_server("--tool-call-parser", "hermes")
    ch = channel(s.grpc_target)
    st = pb_grpc.StemserveStub(ch)
    chat = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="What is the weather in Paris?")])
    seqs = collect(st.Generate(pb.GenerateRequest(chat=chat, max_tokens=16, sampling=GREEDY, tools=[WEATHER]),
                               timeout=120))
    last = seqs[0]["last"]
    assert last.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH, pb.FINISH_REASON_TOOL_CALLS)
    assert (last.finish_reason == pb.FINISH_REASON_TOOL_CALLS) == bool(last.tool_calls)
    assert seqs[0]["text"] or last.tool_calls
    ch.close()
