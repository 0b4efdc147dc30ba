#!/usr/bin/env python3
"""The folders are the architecture: each one includes only itself and the folders below it.

    server -> engine -> structured -> text; engine -> models -> base -> kernels

(models and text are side by side: neither includes the other; structured, between engine and
text, includes only text and kernels.) This lists every `#include "x/..."`
of our sources whose folder x is not below the including file's folder, and exits 1 if there is
one. tests/ and bench/ may include anything; proto/ is generated. Standard library only.

    scripts/check_includes.py [ROOT]
"""
import re
import sys
from pathlib import Path

# Each folder and the folders it may include (besides itself).
BELOW = {
    "kernels": set(),
    "base": {"kernels"},
    "models": {"base", "kernels"},
    "text": {"kernels"},
    "structured": {"text", "kernels"},
    "engine": {"structured", "models", "text", "base", "kernels"},
    "server": {"engine", "structured", "models", "text", "base", "kernels", "proto"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([a-z_]+)/[^"]+"', re.M)


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
    bad = []
    checked = 0
    for folder, allowed in BELOW.items():
        for path in sorted((root / folder).rglob("*")):
            if path.suffix not in (".h", ".cc", ".cu", ".cuh") or "prepare" in path.parts:
                continue
            checked += 1
            text = path.read_text(encoding="utf-8", errors="replace")
            for m in INCLUDE.finditer(text):
                target = m.group(1)
                if target != folder and target in BELOW and target not in allowed:
                    line = text.count("\n", 0, m.start()) + 1
                    bad.append(f"{path.relative_to(root)}:{line}: {folder}/ includes {target}/ ({m.group(0).strip()})")
    for b in bad:
        print(b)
    print(f"check_includes: {checked} files, {len(bad)} upward include(s)"
          f"{'' if bad else ': every arrow points down (server -> engine -> structured, models -> text, base -> kernels)'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
