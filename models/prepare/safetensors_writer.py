"""A streaming safetensors writer (header JSON + raw little-endian data), bf16 included.

numpy has no bfloat16, so we round fp32 to bf16 ourselves (round-to-nearest-even on the upper
16 bits, as torch does) and write the raw uint16 words. Writing by hand also lets us stream one
tensor at a time instead of holding the whole model in memory.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

_DTYPE_SIZE = {"BF16": 2, "F16": 2, "F32": 4}


def fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bit patterns (uint16), round to nearest, ties to even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    lsb = (u >> 16) & 1
    rounded = ((u + np.uint32(0x7FFF) + lsb) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def bf16_bits_to_fp32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def write_safetensors(path: Path, specs: Iterable[tuple[str, tuple[int, ...], str]],
                      produce: Callable[[str], np.ndarray],
                      metadata: dict[str, str] | None = None) -> None:
    """specs: (name, shape, dtype) in file order; produce(name) returns the array to store:
    float32 for F32 (and for BF16, which is rounded here), float16 for F16."""
    specs = list(specs)
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPE_SIZE[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned

    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype in specs:
            arr = produce(name)
            if tuple(arr.shape) != tuple(shape):
                raise ValueError(f"{name}: produced shape {arr.shape}, header says {shape}")
            if dtype == "BF16":
                data = fp32_to_bf16_bits(arr)
            elif dtype == "F32":
                data = np.ascontiguousarray(arr, dtype="<f4")
            else:
                data = np.ascontiguousarray(arr, dtype="<f2")
            f.write(data.tobytes())
    os.replace(tmp, path)


def read_header(path: Path) -> tuple[dict, int]:
    """Returns (header dict, byte offset where data starts)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n
