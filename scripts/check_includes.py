#!/usr/bin/env python3
"""The folders are the architecture: each room includes only itself and the rooms below it.

    server -> engine -> structured -> text; engine -> models -> base -> kernels

(models and text are side by side: neither includes the other; structured, between engine and
text, includes only text and kernels; toolcall, tool calling's definitions and parsers, plain
JSON, includes none of ours and only server includes it.) Inside models/, the forward pass
written once (models/*) knows no device: it includes neither backend (models/cpu/, models/cuda/)
nor the CUDA kernels, and the backends do not include each other; the CUDA kernels (kernels/cuda/)
are reached only through the CUDA backend. A file belongs to the longest room its path starts
with. This lists every `#include "x/..."` of our sources whose room is not below the including
file's room, and exits 1 if there is one. tests/ and bench/ may include anything; proto/ is
generated. Standard library only.

Stem's policy (which prompts and layers use Stem, the budget schedules, the classification of a
step's query blocks: models/stem_policy.h) lives with the model; the kernels know only the
mechanism (kernels/cpu/stem.h). Every file under kernels/ that names one of the policy's
identifiers (POLICY, as a whole word, code or comment) is listed too, and fails the check.

    scripts/check_includes.py [ROOT]
"""
import re
import sys
from pathlib import Path

# Each room and the rooms it may include (besides itself).
BELOW = {
    "kernels": set(),
    "kernels/cuda": {"kernels"},
    "base": {"kernels"},
    "models": {"base", "kernels"},
    "models/cpu": {"models", "base", "kernels"},
    "models/cuda": {"models", "base", "kernels", "kernels/cuda"},
    "text": {"kernels"},
    "structured": {"text", "kernels"},
    "toolcall": set(),
    "engine": {"structured", "models", "text", "base", "kernels"},
    "server": {"engine", "structured", "toolcall", "models", "text", "base", "kernels", "proto"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z_]+/[^"]+)"', re.M)
# Stem's policy (models/stem_policy.h), which no file under kernels/ may name.
POLICY = [
    "StemSettings", "check_stem_settings", "stem_selection_name", "stem_selector_name", "parse_stem_selector",
    "stem_selection_causal", "stem_layer_sparse", "stem_num_blocks", "stem_start_budget", "stem_row_budget",
    "stem_uniform_budget", "stem_query_blocks", "kStemSmallPromptBlocks", "kStemMediumPromptBlocks",
    "kStemMediumRate", "kStemLongRate", "kStemBudgetBase", "min_prompt_len", "dense_layers", "budget_rate",
    "position_decay", "dense_tail_blocks",
]
POLICY_WORD = re.compile(r"\b(" + "|".join(POLICY) + r")\b")


def room_of(path):
    """The longest room that `path` (a/b/c.h) starts with, or None."""
    parts = path.split("/")
    for n in range(len(parts) - 1, 0, -1):
        room = "/".join(parts[:n])
        if room in BELOW:
            return room
    return None


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
    bad, policy = [], []
    checked = 0
    for top in sorted({r.split("/")[0] for r in BELOW}):
        for path in sorted((root / top).rglob("*")):
            if path.suffix not in (".h", ".cc", ".cu", ".cuh") or "prepare" in path.parts:
                continue
            checked += 1
            rel = path.relative_to(root).as_posix()
            room = room_of(rel)
            text = path.read_text(encoding="utf-8", errors="replace")
            for m in INCLUDE.finditer(text):
                target = room_of(m.group(1))
                if target is not None and target != room and target not in BELOW[room]:
                    line = text.count("\n", 0, m.start()) + 1
                    bad.append(f"{rel}:{line}: {room}/ includes {target}/ ({m.group(0).strip()})")
            if room.split("/")[0] == "kernels":
                for m in POLICY_WORD.finditer(text):
                    line = text.count("\n", 0, m.start()) + 1
                    policy.append(f"{rel}:{line}: kernels/ names Stem's policy ({m.group(1)}: models/stem_policy.h)")
    for b in bad + policy:
        print(b)
    print(f"check_includes: {checked} files, {len(bad)} upward include(s), {len(policy)} policy name(s) in kernels/"
          f"{'' if bad or policy else ': every arrow points down (server -> engine -> structured, models -> text, base -> kernels)'}")
    return 1 if bad or policy else 0


if __name__ == "__main__":
    sys.exit(main())
