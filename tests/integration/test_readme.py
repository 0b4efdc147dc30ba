"""README.md's commands are true: its two set-up commands are the scripts, the binary and model its
"Using it" section runs are the ones ./scripts/run.sh builds and prepares, every subcommand and
flag it shows is one the built binary's --help lists (with the defaults it claims), every path it
names exists, and its curl and generate commands work as written against the built binary."""
import json
import pathlib
import re
import shlex
import subprocess
import urllib.request

import pytest

from conftest import ROOT, _binary, _model

README = (ROOT / "README.md").read_text()


def section(title):
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def sh_blocks(text):
    return re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)


def commands(block):
    """(command words, comment) for each command of a sh block, continuation lines joined; a line
    that is only a comment belongs to the command before it."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        code, _, comment = line.partition("  #") if "  #" in line else (line, "", "")
        if code.strip().startswith("#"):
            code, comment = "", code.strip()[1:]
        if code.strip():
            out.append([shlex.split(code), comment])
        elif comment and out:
            out[-1][1] += " " + comment
    return out


def script_default(script, pattern):
    m = re.search(pattern, (ROOT / script).read_text())
    assert m, f"{script} no longer matches {pattern!r}"
    return m.group(1)


def build_folder(script):
    return script_default(script, r'build="\$\{STEM_BUILD_DIR:-\$root/([\w.-]+)\}"')


def built_binary_path():
    """Where ./scripts/run.sh builds stemserve: scripts/build.sh's default folder, and run.sh's bin in it."""
    folder, bin_ = re.search(r'bin="\$\{STEM_BUILD_DIR:-\$root/([\w.-]+)\}(/[\w./-]+)"',
                             (ROOT / "scripts/run.sh").read_text()).groups()
    assert folder == build_folder("scripts/build.sh"), "run.sh runs the binary from another folder than build.sh's"
    return folder + bin_


def default_model_path():
    return script_default("scripts/run.sh", r'model="\$\{STEMSERVE_MODEL:-\$root/([\w./-]+)\}"')


_help = {}


def help_of(subcommand):
    if subcommand not in _help:
        r = subprocess.run([str(_binary()), subcommand, "--help"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        _help[subcommand] = r.stdout
    return _help[subcommand]


def flags_in(text):
    return re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)


def test_set_up_is_two_commands_both_scripts():
    blocks = sh_blocks(section("Set up"))
    assert [b.strip() for b in blocks] == ["./scripts/run.sh", "./scripts/test.sh"]
    for script in ("scripts/run.sh", "scripts/test.sh"):
        assert (ROOT / script).stat().st_mode & 0o111, f"{script} is not executable"


def test_using_it_runs_what_run_sh_builds_and_prepares():
    text = section("Using it")
    binary, model = built_binary_path(), default_model_path()
    assert f"`{binary}`" in text and f"`{model}`" in text  # the prose says where they come from
    cmds = [c for b in sh_blocks(text) for c in commands(b)]
    assert cmds
    for words, _ in cmds:
        if words[0] == "curl":
            continue
        assert words[0] == binary, f"README runs {words[0]}; ./scripts/run.sh builds {binary}"
        if "--model" in words:
            assert words[words.index("--model") + 1] == model


def test_every_subcommand_and_flag_shown_is_accepted():
    top = subprocess.run([str(_binary()), "--help"], capture_output=True, text=True, timeout=30).stdout
    text = section("Using it")
    shown = 0
    for block in sh_blocks(text):
        for words, comment in commands(block):
            if words[0] == "curl":
                continue
            sub = words[1]
            assert re.search(rf"^\s+{sub}\s", top, re.M), f"`stemserve --help` lists no subcommand {sub}"
            listed = set(flags_in(help_of(sub)))
            for flag in flags_in(" ".join(words[2:]) + " " + comment):
                assert flag in listed, f"README shows `{sub} {flag}`; `stemserve {sub} --help` does not list it"
                shown += 1
    # `./scripts/run.sh ARGS` passes its arguments to `stemserve serve` (--model aside).
    for span in re.findall(r"`(\./scripts/run\.sh[^`]*)`", README):
        words = shlex.split(span)[1:]
        if words and words[0] == "generate":
            continue
        for flag in flags_in(" ".join(words)):
            assert flag == "--model" or flag in set(flags_in(help_of("serve"))), span
            shown += 1
    assert shown >= 15


def test_defaults_the_readme_claims():
    serve = help_of("serve")
    for flag, default in (("--port", "8000"), ("--grpc-port", "50051")):
        m = re.search(rf"^\s+{flag} [^\n]*?=(\S+) \(Env:", serve, re.M)  # "--port INT:INT in [0 - 65535]=8000 (Env:..."
        assert m and m.group(1) == default, f"README says {flag} defaults to {default}"
    assert ":8000" in section("Using it") and ":50051" in section("Using it")


def test_every_flag_has_its_environment_variable():
    exempt = {"--help", "--prompt", "--chat", "--system"}  # as README says: those of the prompt
    for sub in ("serve", "generate"):
        for line in help_of(sub).splitlines():
            m = re.match(r"^\s+(?:-\w, )?(--[a-z][a-z0-9-]*)", line)
            if m and m.group(1) not in exempt:
                env = "STEMSERVE_" + m.group(1)[2:].upper().replace("-", "_")
                assert env in line, f"{sub} {m.group(1)} has no {env}: {line}"


def test_every_path_named_exists():
    named = set()
    spans = [m.split()[0] for m in re.findall(r"`([^`]+)`", README)] + re.findall(r"\]\(([^)#\s]+)", README)
    for span in spans:
        if "/" in span and "://" not in span and not span.startswith("-"):
            named.add(span.split("#")[0])
    named |= {w for b in sh_blocks(section("Using it")) for words, _ in commands(b) for w in words
              if re.match(r"^[\w.]+/[\w./-]+$", w)}
    # What the scripts make: run.sh's binary and model (and the model's folder), test.sh's build.
    model = default_model_path()
    built = {built_binary_path(), model, model.rsplit("/", 1)[0] + "/", build_folder("scripts/test.sh") + "/"}
    missing = [p for p in sorted(named)
               if p not in built and not (ROOT / p).exists() and not p.startswith("../")]
    assert not missing, f"README names paths that do not exist: {missing}"
    # The models README names are ones models/prepare/ knows.
    sources = (ROOT / "models/prepare/wheel_source.py").read_text()
    for name in re.findall(r"`(?:\./scripts/run\.sh --model )?(qwen[\w.-]+)`", README):
        assert f'name="{name}"' in sources, name


def test_the_curl_command_works(server):
    words = next(w for b in sh_blocks(section("Using it")) for w, _ in commands(b) if w[0] == "curl")
    url = next(w for w in words if w.startswith("http://"))
    assert url.startswith("http://127.0.0.1:8000/")
    body = words[words.index("-d") + 1]
    req = urllib.request.Request(server.url + url[len("http://127.0.0.1:8000"):], data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        answer = json.load(r)
    assert answer["choices"][0]["text"]


def test_the_generate_command_works():
    model = _model()
    if not (model / "model.safetensors").exists():
        pytest.skip(f"default model not prepared at {model}")
    words = next(w for b in sh_blocks(section("Using it")) for w, _ in commands(b)
                 if w[1] == "generate" and "--help" not in w)
    # As written, from the repository root, with the binary this build made.
    r = subprocess.run([str(_binary()), *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout and r.stdout.endswith("\n")
