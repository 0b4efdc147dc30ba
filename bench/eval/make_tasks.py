#!/usr/bin/env python3
"""Generates the long-context evaluation's prompts (issue 21; docs/stem.md "Long-context accuracy")
as token ids of one model's tokenizer, deterministically from a seed and this machine's files:

  RULER-style tasks (Hsieh et al., 2024), over real haystacks (Vim's documentation):
    niah_single      one needle "One of the special magic numbers for KEY is: VALUE." at 10 depths
    niah_multikey    the same, with 3 distractor needles of other keys
    niah_multivalue  4 needles with the same key: all 4 values asked
    niah_multiquery  4 needles of 4 keys: all 4 values asked
    vt               variable tracking: a chain VAR A = 12345, VAR B = VAR A, ... (5 names) spread
                     through the text; all names holding the value asked
    cwe              common-word extraction: a numbered list where 10 words appear 30 times and the
                     rest 3 times; the 10 asked
  code               repository-level next-line completion: a Python standard-library module M,
                     other stdlib files, then a file F that imports M, up to a line that uses M.name
                     for the first time in F (M's definition is far back in the context)
  doc                perplexity documents of exactly --doc-tokens tokens (source code and prose)

Every prompt is at most LENGTH − max_new tokens (the answer's room), measured with the model's
tokenizer; the RULER prompts are the chat template's user turn followed by the answer prefix, as
RULER primes them. Output: DIR/index.json (one record per prompt: task, length, index, where its
tokens are, max_new, answers, ...) and DIR/tokens.bin (uint32 little-endian, all prompts
back to back). stem_eval --data DIR reads them; report.py scores the answers the same way.

    make_tasks.py --model models/cache/Qwen2.5-Coder-1.5B-Instruct --out build-eval/tasks \\
        [--lengths 8192,16384,32768] [--per-task 50] [--tasks ...] [--doc-tokens 32768] [--seed 21]
"""
import argparse
import ast
import glob
import hashlib
import json
import os
import random
import re
import sys
import time
from array import array

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

RULER_TASKS = ["niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe"]
ALL_TASKS = RULER_TASKS + ["code"]
# Greedy tokens each task may generate (the answer's room in the context).
MAX_NEW = {"niah_single": 24, "niah_multikey": 24, "niah_multivalue": 64, "niah_multiquery": 64,
           "vt": 40, "cwe": 96, "code": 48}
DEPTHS = 10  # niah_single: needle depths 0, 1/9, ..., 1 of the haystack

HAYSTACK_GLOB = "/usr/share/vim/vim90/doc/*.txt"
HAYSTACK_TOKENS = 600_000  # the first files (sorted) up to this many tokens
STDLIB = "/usr/lib/python3.11"
# Perplexity documents: (name, kind, files concatenated in order until --doc-tokens).
DOCS = [
    ("vim-user-manual", "prose", ["/usr/share/vim/vim90/doc/usr_*.txt"]),
    ("licenses", "prose", ["/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0",
                           "/usr/share/common-licenses/MPL-2.0", "/usr/share/common-licenses/GPL-2",
                           "/usr/share/common-licenses/LGPL-2.1", "/usr/share/common-licenses/GFDL-1.3",
                           "/usr/share/common-licenses/Artistic", "/usr/share/common-licenses/*"]),
    ("debian-copyright", "prose", ["/usr/share/doc/*/copyright"]),
    ("py-decimal", "code", [f"{STDLIB}/_pydecimal.py"]),
    ("py-typing-dataclasses", "code", [f"{STDLIB}/typing.py", f"{STDLIB}/dataclasses.py", f"{STDLIB}/enum.py"]),
    ("vim-script", "code", ["/usr/share/vim/vim90/autoload/*.vim"]),
]

# RULER's prompt wording (its synthetic/constants.py templates), with our needles.
NIAH_TEMPLATE = ("Some special magic numbers are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the numbers afterwards.\n{context}\n"
                 "What are all the special magic numbers for {query} mentioned in the provided text?")
NIAH_PREFIX = " The special magic numbers for {query} mentioned in the provided text are"
NEEDLE = "One of the special magic numbers for {key} is: {value}."
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
               "Question: Find all variables that are assigned the value {query} in the text above.")
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
             "assgined the value {query}, they are: ")
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. "
                "Memorize the ones that appear most often.\n{context}\n"
                "Question: What are the 10 most common words in the above list?")
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_text(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


class Model:
    """The model's tokenizer and chat template, as transformers renders it."""

    def __init__(self, folder):
        self.folder = folder
        self.tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        with open(os.path.join(folder, "tokenizer_config.json")) as f:
            cfg = json.load(f)
        with open(os.path.join(folder, "config.json")) as f:
            self.config = json.load(f)
        template = cfg.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = next(t["template"] for t in template if t.get("name") == "default")
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False)
        env.globals["raise_exception"] = raise_exception
        self.template = env.from_string(template) if template else None
        self.special = {k: cfg.get(k) for k in ("bos_token", "eos_token")}

    def chat(self, user):
        if self.template is None:
            return user
        special = {k: (v["content"] if isinstance(v, dict) else v) or "" for k, v in self.special.items()}
        return self.template.render(messages=[{"role": "user", "content": user}], add_generation_prompt=True,
                                    **special)

    def encode(self, text, special=False):
        return self.tok.encode(text, add_special_tokens=special).ids

    def count_lines(self, lines):
        return [len(e.ids) for e in self.tok.encode_batch(lines, add_special_tokens=False)]


class Haystack:
    """Real text as lines with their token counts; a prompt takes a window of consecutive lines."""

    def __init__(self, model, files, max_tokens):
        self.lines, self.counts, self.files = [], [], []
        total = 0
        for path in files:
            lines = read_text(path).splitlines(keepends=True)
            counts = model.count_lines(lines)
            self.lines += lines
            self.counts += counts
            self.files.append(path)
            total += sum(counts)
            if total >= max_tokens:
                break
        self.total = total

    def window(self, rng, tokens):
        """Consecutive lines (wrapping around) from a random start, about `tokens` tokens."""
        start = rng.randrange(len(self.lines))
        out, n, i = [], 0, start
        while n < tokens:
            out.append(self.lines[i])
            n += self.counts[i]
            i = (i + 1) % len(self.lines)
        return out


WORDS_GLOBS = ["/usr/share/common-licenses/*", "/usr/share/doc/*/copyright"]


def english_words(rng_seed):
    """Plain lowercase English words (4-10 letters, standing alone) seen at least 3 times in Debian's
    licence and copyright texts, sorted, then shuffled by the seed: the keys of the needles and the
    words of cwe."""
    counts = {}
    for pattern in WORDS_GLOBS:
        for path in sorted(glob.glob(pattern)):
            for w in re.findall(r"(?<![\w\-'./@])[a-z]{4,10}(?![\w\-'/@])", read_text(path)):
                counts[w] = counts.get(w, 0) + 1
    words = sorted(w for w, n in counts.items() if n >= 3)
    random.Random(rng_seed).shuffle(words)
    return words


def fit(build, budget, guess, reset):
    """Calls build(haystack_tokens) -> (ids, record), after reset() (which reseeds build's rng), and
    adjusts the haystack until the prompt fits `budget` tokens within a line or so: the longest
    prompt that fits is kept."""
    best, target = None, guess
    for _ in range(10):
        reset()
        ids, rec = build(target)
        n = len(ids)
        if n <= budget and (best is None or n > len(best[0])):
            best = (ids, rec)
        if n <= budget and budget - n <= max(16, budget // 256):
            break
        target = max(16, target + (budget - n) - (8 if n > budget else 0))
    if best is None:
        raise RuntimeError("cannot fit a prompt into %d tokens" % budget)
    return best


def insert_lines(lines, inserts):
    """lines with each (depth, text) of inserts put between lines at that fraction of the text."""
    out = list(lines)
    # From the deepest, so earlier indices stay valid; a line of its own each.
    for depth, text in sorted(inserts, key=lambda x: -x[0]):
        at = round(depth * len(out))
        out.insert(at, text + "\n")
    return out


def key_of(rng, words, used):
    while True:
        k = f"{rng.choice(words)}-{rng.choice(words)}"
        if k not in used:
            used.add(k)
            return k


def number(rng, digits, used):
    while True:
        v = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
        if v not in used:
            used.add(v)
            return v


def ruler_prompt(model, task, length, index, seed, hay, words):
    """One RULER-style prompt: (ids, record)."""
    max_new = MAX_NEW[task]
    budget = length - max_new
    rng = random.Random()
    reseed = lambda: rng.seed(f"{seed}:{task}:{length}:{index}")  # noqa: E731

    def build(hay_tokens):
        rec = {"task": task, "length": length, "index": index, "max_new": max_new}
        if task.startswith("niah"):
            used_keys, used_values = set(), set()
            if task == "niah_single":
                depth = (index % DEPTHS) / (DEPTHS - 1)
                key = key_of(rng, words, used_keys)
                values = [number(rng, 7, used_values)]
                needles = [(depth, NEEDLE.format(key=key, value=values[0]))]
                queries, answers = [key], values
                rec["depth"] = depth
            elif task == "niah_multikey":
                keys = [key_of(rng, words, used_keys) for _ in range(4)]
                vals = [number(rng, 7, used_values) for _ in range(4)]
                needles = [(rng.random(), NEEDLE.format(key=k, value=v)) for k, v in zip(keys, vals)]
                queries, answers = [keys[0]], [vals[0]]
            elif task == "niah_multivalue":
                key = key_of(rng, words, used_keys)
                vals = [number(rng, 7, used_values) for _ in range(4)]
                needles = [(rng.random(), NEEDLE.format(key=key, value=v)) for v in vals]
                queries, answers = [key], vals
            else:  # niah_multiquery
                keys = [key_of(rng, words, used_keys) for _ in range(4)]
                vals = [number(rng, 7, used_values) for _ in range(4)]
                needles = [(rng.random(), NEEDLE.format(key=k, value=v)) for k, v in zip(keys, vals)]
                queries, answers = keys, vals
            lines = hay.window(rng, hay_tokens)
            context = "".join(insert_lines(lines, needles))
            query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
            user = NIAH_TEMPLATE.format(context=context.rstrip("\n"), query=query)
            prefix = NIAH_PREFIX.format(query=query)
        elif task == "vt":
            names, used = [], set()
            while len(names) < 5:
                n = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
                if n not in used:
                    used.add(n)
                    names.append(n)
            value = number(rng, 5, set())
            chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[i]} = VAR {names[i - 1]}" for i in range(1, 5)]
            # In order through the text, at evenly spread depths (RULER spreads the chain likewise).
            inserts = [((i + 0.5) / len(chain), s + ".") for i, s in enumerate(chain)]
            lines = hay.window(rng, hay_tokens)
            context = "".join(insert_lines(lines, inserts))
            user = VT_TEMPLATE.format(context=context.rstrip("\n"), query=value)
            prefix = VT_PREFIX.format(num_v=len(names), query=value)
            answers = names
        elif task == "cwe":
            # hay_tokens sets the list's length (~7 tokens an entry, "1234. word\n"). RULER's 10
            # common words 30 times each and the rest 3 times; fewer repeats where 300 entries do not fit.
            entries = max(40, hay_tokens // 7)
            freq_cw = 30 if entries >= 600 else max(5, entries // 20)
            freq_ucw = 3
            n_rare = max(1, (entries - 10 * freq_cw) // freq_ucw)
            pool = rng.sample(words, min(len(words), 10 + n_rare))
            common, rare = pool[:10], pool[10:]
            if n_rare > len(rare):
                raise RuntimeError("cwe: the haystack's vocabulary (%d words) is too small" % len(words))
            items = common * freq_cw + rare[:n_rare] * freq_ucw
            rng.shuffle(items)
            context = "\n".join(f"{i + 1}. {w}" for i, w in enumerate(items))
            user = CWE_TEMPLATE.format(context=context)
            prefix = CWE_PREFIX
            answers = common
        else:
            raise ValueError(task)
        text = model.chat(user) + prefix
        ids = model.encode(text)
        rec["answers"] = answers
        return ids, rec

    overhead = len(model.encode(model.chat(NIAH_TEMPLATE) + NIAH_PREFIX))
    return fit(build, budget, max(64, budget - overhead - 32), reseed)


class CodeCorpus:
    """Python standard-library modules and, per module F, the lines that use M.name for the first
    time in F where F does `import M` of another top-level module M."""

    def __init__(self, model):
        self.model = model
        self.files = {}
        for path in sorted(glob.glob(f"{STDLIB}/*.py")):
            name = os.path.basename(path)[:-3]
            text = read_text(path)
            self.files[name] = text
        names = sorted(self.files)
        self.tokens = dict(zip(names, model.count_lines([self.header(n) + self.files[n] for n in names])))
        self.sites = []  # (F, line index, M, name)
        self.order = {}  # length -> the eligible sites in the seed's order
        for f in names:
            try:
                tree = ast.parse(self.files[f])
            except SyntaxError:
                continue
            imported = {}
            for node in tree.body:
                if isinstance(node, ast.Import):
                    for a in node.names:
                        if a.name in self.files and a.name != f and "." not in a.name:
                            imported[a.asname or a.name] = a.name
            if not imported:
                continue
            defined = {m: set(self.definitions(m)) for m in set(imported.values())}
            lines = self.files[f].splitlines(keepends=True)
            first = {}
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported
                        and node.attr in defined[imported[node.value.id]]):
                    key = (node.value.id, node.attr)
                    if key not in first or node.lineno < first[key]:
                        first[key] = node.lineno
            for (alias, attr), lineno in sorted(first.items(), key=lambda x: x[1]):
                line = lines[lineno - 1]
                stripped = line.strip()
                # A line that is the statement's whole source, long enough to be a real completion.
                if len(stripped) < 12 or stripped.startswith("#") or stripped.endswith(("\\", "(", ",", "[", "{")):
                    continue
                if f"{alias}.{attr}" in "".join(lines[:lineno - 1]):
                    continue
                self.sites.append((f, lineno - 1, imported[alias], attr))

    @staticmethod
    def header(name):
        return f"# Path: Lib/{name}.py\n"

    def definitions(self, module):
        """Top-level functions and classes of `module`: name -> (first line, last line), 0-based."""
        try:
            tree = ast.parse(self.files[module])
        except SyntaxError:
            return {}
        out = {}
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
                out[node.name] = (first, node.end_lineno - 1)
        return out

    def module_text(self, m, attr, room):
        """M as the context holds it: the whole file when it fits `room` tokens, else a window of its
        lines from a little before the definition of `attr` (a cropped file, as RepoBench's)."""
        if self.tokens[m] <= room:
            return self.header(m) + self.files[m]
        lines = self.files[m].splitlines(keepends=True)
        counts = self.model.count_lines(lines)
        first, _ = self.definitions(m)[attr]
        start = max(0, first - 10)
        out, n = [], len(self.model.encode(self.header(m)))
        for i in range(start, len(lines)):
            if n + counts[i] > room:
                break
            out.append(lines[i])
            n += counts[i]
        return self.header(m) + "".join(out)

    def prompt(self, length, index, seed):
        """(ids, record) of one completion prompt at `length` tokens: the index-th of this length's
        sites, in an order shuffled by the seed (distinct sites while there are enough)."""
        max_new = MAX_NEW["code"]
        budget = length - max_new
        if length not in self.order:
            eligible = []
            for site in self.sites:
                f, line = site[0], site[1]
                n = len(self.model.encode(self.header(f) + "".join(self.files[f].splitlines(keepends=True)[:line])))
                if 64 <= n <= 0.25 * budget:
                    eligible.append((site, n))
            if not eligible:
                raise RuntimeError("code: no completion site fits %d tokens" % length)
            random.Random(f"{seed}:code:{length}").shuffle(eligible)
            self.order[length] = eligible
        (f, line, m, attr), prefix_tokens = self.order[length][index % len(self.order[length])]
        rng = random.Random(f"{seed}:code:{length}:{index}")
        lines = self.files[f].splitlines(keepends=True)
        prefix = self.header(f) + "".join(lines[:line])
        m_text = self.module_text(m, attr, int(0.4 * budget))
        m_tokens = len(self.model.encode(m_text))
        target = lines[line].rstrip("\n")
        others = [n for n in self.files if n not in (f, m)]
        rng.shuffle(others)
        room = budget - m_tokens - prefix_tokens - 16
        middle = []
        for n in others:
            if self.tokens[n] <= room:
                middle.append(n)
                room -= self.tokens[n]
            if room < 200:
                break
        text = m_text + "\n" + "".join(self.header(n) + self.files[n] + "\n" for n in middle) + prefix
        ids = self.model.encode(text, special=True)
        while len(ids) > budget and middle:  # the per-file counts were estimates: drop files until it fits
            middle.pop()
            text = m_text + "\n" + "".join(self.header(n) + self.files[n] + "\n" for n in middle) + prefix
            ids = self.model.encode(text, special=True)
        if len(ids) > budget:
            raise RuntimeError("code: prompt over budget")
        rec = {"task": "code", "length": length, "index": index, "max_new": max_new, "answers": [target],
               "stop": "line", "file": f, "line": line + 1, "module": m, "name": attr,
               "module_whole": self.tokens[m] <= int(0.4 * budget), "distance": len(ids) - m_tokens,
               "distinct_sites": len(self.order[length])}
        return ids, rec


def make_doc(model, name, kind, patterns, tokens):
    files = []
    for p in patterns:
        files += [f for f in sorted(glob.glob(p)) if f not in files and os.path.isfile(f)]
    text, used = "", []
    for path in files:
        text += read_text(path)
        used.append(path)
        if len(text) > tokens * 6:  # enough characters for the tokens (≥ 1 char per token, usually 3-4)
            ids = model.encode(text, special=True)
            if len(ids) >= tokens:
                break
    ids = model.encode(text, special=True)
    if len(ids) < tokens:
        raise RuntimeError(f"document {name}: its files hold {len(ids)} tokens, {tokens} wanted")
    return ids[:tokens], {"task": "doc", "name": name, "kind": kind, "length": tokens, "index": 0,
                          "files": len(used), "first_file": used[0], "last_file": used[-1]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="model folder (tokenizer.json, tokenizer_config.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default="8192,16384,32768")
    ap.add_argument("--per-task", type=int, default=50)
    ap.add_argument("--tasks", default=",".join(ALL_TASKS))
    ap.add_argument("--doc-tokens", type=int, default=32768, help="perplexity documents' length (0: none)")
    ap.add_argument("--docs", type=int, default=len(DOCS), help="how many of the documents")
    ap.add_argument("--seed", default="21")
    ap.add_argument("--haystack-tokens", type=int, default=HAYSTACK_TOKENS,
                    help="how much of Vim's documentation the haystacks draw from (tokens)")
    a = ap.parse_args()
    lengths = [int(x) for x in a.lengths.split(",") if x]
    tasks = [t for t in a.tasks.split(",") if t]
    for t in tasks:
        if t not in ALL_TASKS:
            sys.exit(f"make_tasks.py: unknown task {t} ({', '.join(ALL_TASKS)})")
    t0 = time.time()
    model = Model(a.model)
    max_pos = model.config.get("max_position_embeddings", 1 << 30)
    if max(lengths + [a.doc_tokens]) > max_pos:
        sys.exit(f"make_tasks.py: lengths up to {max(lengths + [a.doc_tokens])} but the model has {max_pos} positions")
    os.makedirs(a.out, exist_ok=True)
    tokens = array("I")
    records = []

    def add(ids, rec):
        rec["offset"] = len(tokens)
        rec["tokens"] = len(ids)
        tokens.extend(ids)
        records.append(rec)

    hay = words = None
    if any(t in RULER_TASKS for t in tasks):
        hay = Haystack(model, sorted(glob.glob(HAYSTACK_GLOB)), a.haystack_tokens)
        words = english_words(f"{a.seed}:words")
        print(f"haystack: {len(hay.files)} files, {len(hay.lines)} lines, {hay.total} tokens; {len(words)} words",
              file=sys.stderr)
    code = CodeCorpus(model) if "code" in tasks else None
    if code:
        print(f"code: {len(code.files)} stdlib modules, {len(code.sites)} completion sites", file=sys.stderr)
    for length in lengths:
        for task in tasks:
            for i in range(a.per_task):
                if task == "code":
                    ids, rec = code.prompt(length, i, a.seed)
                else:
                    ids, rec = ruler_prompt(model, task, length, i, a.seed, hay, words)
                add(ids, rec)
            mean = sum(r["tokens"] for r in records if r["task"] == task and r["length"] == length) / a.per_task
            print(f"{task:16} {length:6}: {a.per_task} prompts, mean {mean:.0f} tokens ({time.time() - t0:.0f} s)",
                  file=sys.stderr)
    if a.doc_tokens > 0:
        for name, kind, patterns in DOCS[:a.docs]:
            ids, rec = make_doc(model, name, kind, patterns, a.doc_tokens)
            add(ids, rec)
            print(f"doc {name}: {len(ids)} tokens", file=sys.stderr)
    with open(os.path.join(a.out, "tokens.bin"), "wb") as f:
        if sys.byteorder != "little":
            tokens.byteswap()
        tokens.tofile(f)
    index = {
        "generator": "bench/eval/make_tasks.py",
        "seed": a.seed,
        "model": os.path.basename(os.path.normpath(a.model)),
        "tokenizer_sha256": sha256_file(os.path.join(a.model, "tokenizer.json")),
        "vocab_size": model.tok.get_vocab_size(),
        "lengths": lengths,
        "per_task": a.per_task,
        "tasks": tasks,
        "doc_tokens": a.doc_tokens,
        "haystack": {"files": len(hay.files), "first": hay.files[0], "last": hay.files[-1], "tokens": hay.total}
        if hay else None,
        "words": {"count": len(words), "sha256": hashlib.sha256("\n".join(sorted(words)).encode()).hexdigest()}
        if words else None,
        "total_tokens": len(tokens),
        "prompts": records,
    }
    with open(os.path.join(a.out, "index.json"), "w") as f:
        json.dump(index, f, indent=0)
        f.write("\n")
    print(f"make_tasks.py: {len(records)} prompts, {len(tokens)} tokens in {a.out} ({time.time() - t0:.0f} s)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
