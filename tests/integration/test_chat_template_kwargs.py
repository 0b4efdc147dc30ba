"""chat_template_kwargs reach the chat template (issue 19's client findings: SmolLM3's
enable_thinking and the like), in /v1/chat/completions and /tokenize; the request's own fields
cannot be passed that way."""
import httpx

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
            "{% if greeting is defined %}[{{ greeting }}]{% endif %}"
            "{% if enable_thinking is defined and not enable_thinking %}[no thinking]{% endif %}")


def model_with_template(tmp_path, source):
    """The default model's files, with a chat template that prints the variables under test."""
    import json
    folder = tmp_path / "model"
    folder.mkdir()
    for f in source.iterdir():
        if f.name != "tokenizer_config.json":
            (folder / f.name).symlink_to(f)
    config = json.loads((source / "tokenizer_config.json").read_text())
    config["chat_template"] = TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def rendered(s, body):
    r = httpx.post(s.url + "/tokenize", json=body, timeout=30)
    assert r.status_code == 200, r.text
    r = httpx.post(s.url + "/detokenize", json={"tokens": r.json()["tokens"]}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["prompt"]


def test_chat_template_kwargs_reach_the_template(make_server, monkeypatch, tmp_path):
    from conftest import _model
    monkeypatch.setenv("STEM_TEST_MODEL", str(model_with_template(tmp_path, _model())))
    s = make_server()
    messages = [{"role": "user", "content": "Hi"}]
    assert rendered(s, {"messages": messages}) == "<user>Hi"
    kwargs = {"greeting": "hello there", "enable_thinking": False}
    assert rendered(s, {"messages": messages, "chat_template_kwargs": kwargs}) == \
        "<user>Hi[hello there][no thinking]"
    # A chat completion takes them too (the prompt is longer by what they added).
    body = {"messages": messages, "max_tokens": 1, "temperature": 0}
    plain = httpx.post(s.url + "/v1/chat/completions", json=body, timeout=60)
    with_kw = httpx.post(s.url + "/v1/chat/completions", json={**body, "chat_template_kwargs": kwargs}, timeout=60)
    assert plain.status_code == 200 and with_kw.status_code == 200, with_kw.text
    assert with_kw.json()["usage"]["prompt_tokens"] > plain.json()["usage"]["prompt_tokens"]
    # The request's own fields are not kwargs; the kwargs are an object.
    for bad, param in (({"messages": []}, "chat_template_kwargs.messages"),
                       ({"add_generation_prompt": False}, "chat_template_kwargs.add_generation_prompt"),
                       ("x", "chat_template_kwargs")):
        r = httpx.post(s.url + "/v1/chat/completions", json={**body, "chat_template_kwargs": bad}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_chat_template_kwargs_over_grpc(make_server, monkeypatch, tmp_path):
    """The gRPC API's ChatMessages.chat_template_kwargs (a JSON object as text) render the same."""
    import json

    import grpc
    from conftest import _model
    from grpc_helpers import channel, stubs
    pb, pb_grpc = stubs()
    monkeypatch.setenv("STEM_TEST_MODEL", str(model_with_template(tmp_path, _model())))
    s = make_server()
    st = pb_grpc.StemserveStub(channel(s.grpc_target))
    messages = [pb.ChatMessage(role="user", content="Hi")]

    def rendered(kwargs):
        ids = st.Tokenize(pb.TokenizeRequest(chat=pb.ChatMessages(messages=messages, chat_template_kwargs=kwargs)))
        return st.Detokenize(pb.DetokenizeRequest(token_ids=ids.token_ids)).text

    assert rendered("") == "<user>Hi"
    assert rendered(json.dumps({"greeting": "hello there", "enable_thinking": False})) == \
        "<user>Hi[hello there][no thinking]"
    for bad, param in (('{"tools": []}', "chat.chat_template_kwargs.tools"), ("[1]", "chat.chat_template_kwargs"),
                       ("{", "chat.chat_template_kwargs")):
        try:
            rendered(bad)
            raise AssertionError(f"{bad} was accepted")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and param in e.details(), e.details()
