"""Readers for the deployment files, for tests that have no Docker engine or cluster to ask:
a Dockerfile parser (stages, instructions, ARG substitution in FROM, exec and shell forms), the
.dockerignore matcher (the rules of Docker's build context), Compose variable interpolation, and
the repository's tracked files (what a fresh clone, and so CI and `docker build`, has).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shlex
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"


@dataclasses.dataclass
class Instruction:
    keyword: str        # upper case: FROM, RUN, COPY...
    args: str           # the rest of the logical line, continuations joined
    flags: dict         # leading --name=value flags (RUN --mount, COPY --from, HEALTHCHECK --interval)
    line: int           # 1-based line of its first physical line


@dataclasses.dataclass
class Stage:
    image: str          # the base image, build ARGs substituted
    name: str | None
    instructions: list

    def all(self, keyword):
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self):
        """The ENV of this stage (base image's own ENV not included), in order, with the stage's
        ARGs at their defaults substituted (as `docker build` without --build-arg has them)."""
        out, args = {}, {}
        for i in self.instructions:
            if i.keyword == "ARG":
                key, _, value = i.args.partition("=")
                args[key.strip()] = value.strip()
            elif i.keyword == "ENV":
                out.update({k: substitute(v, args) for k, v in parse_env(i.args).items()})
        return out

    def arg(self, name):
        """The default of the stage's ARG name (None when the stage declares none)."""
        found = [i.args.partition("=") for i in self.all("ARG")]
        return next((value.strip() for key, _, value in found if key.strip() == name), None)

    def exec_form(self, keyword):
        """The last ENTRYPOINT/CMD of the stage as a list (shell form: /bin/sh -c ...)."""
        found = self.all(keyword)
        return exec_or_shell(found[-1].args) if found else None


def logical_lines(text):
    """(line number, text) per instruction: comments dropped, backslash continuations joined."""
    out, buf, start = [], [], 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comment lines inside a continuation are dropped
            continue
        if not buf:
            start = n
        if raw.rstrip().endswith("\\"):
            buf.append(raw.rstrip()[:-1])
            continue
        buf.append(raw)
        out.append((start, " ".join(part.strip() for part in buf).strip()))
        buf = []
    if buf:
        out.append((start, " ".join(part.strip() for part in buf).strip()))
    return out


def split_flags(args):
    """Leading --flag=value words (as RUN, COPY and HEALTHCHECK take them) and the rest."""
    flags = {}
    rest = args
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, value = word[2:].partition("=")
        flags.setdefault(name, []).append(value)
        rest = rest.lstrip()
    return flags, rest


def substitute(text, values):
    def repl(m):
        name = m.group(1) or m.group(3)
        default = m.group(2)
        value = values.get(name)
        return value if value else (default or "")
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", repl, text)


def parse_dockerfile(path=DOCKERFILE):
    """The stages of a Dockerfile, in order; global ARGs (before the first FROM, each default
    filled with those above it) fill FROM lines."""
    stages, global_args = [], {}
    for line, text in logical_lines(pathlib.Path(path).read_text()):
        keyword, _, args = text.partition(" ")
        keyword = keyword.upper()
        args = args.strip()
        flags, rest = split_flags(args) if keyword in ("RUN", "COPY", "ADD", "HEALTHCHECK", "FROM") else ({}, args)
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(substitute(words[0], global_args), name, []))
            continue
        if not stages:
            if keyword == "ARG":
                key, _, value = args.partition("=")
                global_args[key.strip()] = substitute(value.strip(), global_args)
            continue
        stages[-1].instructions.append(Instruction(keyword, rest, flags, line))
    return stages


def exec_or_shell(args):
    """An instruction's command: the JSON (exec) form as it is, the shell form under /bin/sh -c."""
    if args.startswith("["):
        return json.loads(args)
    return ["/bin/sh", "-c", args]


def parse_env(args):
    """ENV K=V K2="V 2" (or the old ENV K V) as a dict."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(w.split("=", 1) for w in words)


def copy_sources(instruction):
    """The context paths a COPY/ADD reads (none for COPY --from=stage)."""
    if "from" in instruction.flags:
        return []
    args = instruction.args
    words = json.loads(args) if args.startswith("[") else args.split()
    return words[:-1]


def healthcheck(stage):
    """(options, command list) of the stage's HEALTHCHECK, or None."""
    found = stage.all("HEALTHCHECK")
    if not found:
        return None
    h = found[-1]
    keyword, _, cmd = h.args.partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK {keyword}: expected CMD"
    return {k: v[-1] for k, v in h.flags.items()}, exec_or_shell(cmd.strip())


# ---- .dockerignore ----

def _pattern_regex(pattern):
    """Go's filepath.Match with Docker's '**' (any number of folders), as one regular expression."""
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):  # '**/' : zero or more whole folders
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            j = pattern.index("]", i)
            out += "[" + pattern[i + 1:j].replace("!", "^", 1) + "]"
            i = j
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    """Which context paths `docker build` leaves out: the last matching pattern decides ('!'
    lets a path back in), and a pattern that matches a folder matches everything under it."""

    def __init__(self, path=ROOT / ".dockerignore"):
        self.rules = []
        for raw in pathlib.Path(path).read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            self.rules.append((negate, _pattern_regex(pattern)))

    def excluded(self, relpath):
        relpath = os.path.normpath(str(relpath)).lstrip("/")
        parts = relpath.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for negate, regex in self.rules:
            if any(regex.match(p) for p in prefixes):
                result = not negate
        return result


def context_size(ignore):
    """Bytes and files of the build context `docker build .` would send from this work tree."""
    total, files = 0, 0
    for dirpath, dirnames, filenames in os.walk(ROOT):
        rel = os.path.relpath(dirpath, ROOT)
        rel = "" if rel == "." else rel + "/"
        dirnames[:] = [d for d in dirnames if not ignore.excluded(rel + d)]
        for f in filenames:
            if not ignore.excluded(rel + f):
                p = os.path.join(dirpath, f)
                if os.path.isfile(p) and not os.path.islink(p):
                    total += os.path.getsize(p)
                    files += 1
    return total, files


def tracked_files():
    """The files a fresh clone has (git ls-files), or every file when this is no git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]


# ---- Compose ----

def compose_interpolate(value, environ):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default} and $$ against `environ`."""
    def repl(m):
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        if op == ":-":
            return environ.get(name) or default
        if op == "-":
            return environ.get(name, default)
        return environ.get(name, "")
    return re.sub(r"\$\$|\$\{(\w+)(?:(:?-)([^}]*))?\}", repl, value)
