"""`stemserve generate` as README shows it: the answer on stdout ending in a newline, the log on
stderr; with --logprobs, JSON lines only (one per token, then the whole text)."""
import json
import subprocess

import pytest

from conftest import _binary, _model


def generate(*args):
    model = _model()
    if not (model / "model.safetensors").exists():
        pytest.skip(f"default model not prepared at {model}")
    return subprocess.run([str(_binary()), "generate", "--model", str(model), "--temperature", "0", *args],
                          capture_output=True, text=True, timeout=120)


def test_generate_prints_the_answer_and_a_newline():
    r = generate("--chat", "--prompt", "What is the capital of France?", "--max-tokens", "16")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert r.stdout.endswith("\n") and r.stdout.count("\n") >= 1
    assert "finish_reason=" in r.stderr and "finish_reason=" not in r.stdout


def test_generate_logprobs_prints_json_lines_only():
    r = generate("--prompt", "The capital of France is", "--max-tokens", "5", "--ignore-eos", "--logprobs", "2")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 6, r.stdout
    for tok in lines[:5]:
        assert {"token", "id", "text", "logprob", "top"} <= tok.keys()
        assert len(tok["top"]) == 2 and tok["top"][0]["logprob"] >= tok["top"][1]["logprob"]
        assert tok["logprob"] <= 0
    assert lines[-1]["completion_tokens"] == 5 and lines[-1]["finish_reason"] == "length"
    assert lines[-1]["text"] == "".join(t["text"] for t in lines[:5])
