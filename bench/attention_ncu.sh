#!/usr/bin/env bash
# One GPU-machine call that profiles the Hopper prefill kernel with Nsight Compute: one launch on
# Stem lists at 128K and one dense launch at 32K (bench_stem's calls), full section set, clocks
# left alone. Reports (.ncu-rep), their text and the per-instruction (SASS) stall samples as CSV
# go to $OUT (else build-gpu/logs). STEM_PREFILL_SM90 picks the kernel build, as everywhere.
# Usage: bench/attention_ncu.sh [--plain] (--plain: also a plain bench_stem run with clocks sampled)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${STEM_BUILD_DIR:-$root/build-gpu}"
logs="${OUT:-$build/logs}"
mkdir -p "$logs"
source "$root/scripts/gpu_common.sh"
gpu_info
start=$(date +%s)
build_kernels "$root" "$build" "$logs/build.log" bench_stem || exit 1
echo "built in $(($(date +%s) - start)) s"
ncu_bin="$(command -v ncu || echo /usr/local/cuda/bin/ncu)"
profile() {  # name, launch-skip, bench_stem args...
  local name="$1" skip="$2"
  shift 2
  "$ncu_bin" --clock-control none --set full -k regex:prefill_sm90 --launch-skip "$skip" --launch-count 1 \
    -o "$logs/$name" -f "$@" > "$logs/$name.run.txt" 2>&1
  echo "ncu $name: rc $?"
  "$ncu_bin" --import "$logs/$name.ncu-rep" --page details --print-details all > "$logs/$name.txt" 2>&1
  "$ncu_bin" --import "$logs/$name.ncu-rep" --page source --csv --print-source sass > "$logs/$name.sass.csv" 2>&1
  grep -E "SM: Pipe Tensor Cycles Active|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Hit Rate|DRAM Throughput|L1/TEX Hit|Executed Ipc A|Issue Slots Busy|No Eligible|Registers Per|Achieved Occ|SM Frequency|DRAM Frequency" "$logs/$name.txt" | head -n 30
}
profile stem128k 3 "$build/bench/bench_stem" --min-len 131072 --max-len 131072
profile dense32k 70 "$build/bench/bench_stem" --min-len 32768 --max-len 32768
[ "${1:-}" = --plain ] || exit 0
echo "== plain run, clocks sampled"
start_clocks "$logs/clocks.txt"
"$build/bench/bench_stem" --min-len 32768 --max-len 131072
stop_clocks "$logs/clocks.txt"
