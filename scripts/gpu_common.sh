# Sourced by the GPU-machine scripts (bench/*.sh, scripts/gpu_test.sh): the card's state, the
# kernels-only build (what that machine can build: it lacks the server's libraries) and the clock
# sampler.

gpu_info() {  # one line: name, clocks now and at most, temperature, power draw and limit
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,power.limit --format=csv,noheader
}

# build_kernels SRC BUILD LOG [-k] TARGETS...: configure SRC into BUILD (Release, kernels/ and
# their tests and benchmarks only, CUDA on, ptxas resource lines in the log) and build TARGETS (all
# when none), logging both to LOG. -k keeps going past a failed target. On failure prints the errors
# and returns non-zero.
build_kernels() {
  local src="$1" dir="$2" log="$3" keep=()
  shift 3
  [ "${1:-}" = -k ] && { keep=(-- -k 0); shift; }
  local args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DSTEM_ONLY_KERNELS=ON -DSTEM_CUDA=ON -DSTEM_CUDA_RESOURCE_USAGE=ON)
  if [ ! -f /usr/include/cblas.h ]; then  # OpenBLAS's header elsewhere (the GPU machine's image)
    local cblas
    cblas="$(find /usr/include /usr/local/include /opt -name cblas.h 2> /dev/null | head -n 1)"
    [ -n "$cblas" ] && args+=("-DCBLAS_INCLUDE_DIR=$(dirname "$cblas")")
  fi
  local targets=()
  [ $# -gt 0 ] && targets=(--target "$@")
  if ! cmake -S "$src" -B "$dir" "${args[@]}" > "$log" 2>&1; then
    tail -n 30 "$log"
    echo "== where things are (what the configure step looks for)"
    find / -xdev \( -name cblas.h -o -name 'Catch2Config.cmake' -o -name 'libopenblas*.so' \) 2> /dev/null | head -n 20
    return 1
  fi
  if ! cmake --build "$dir" -j "${STEM_JOBS:-16}" "${targets[@]}" "${keep[@]}" >> "$log" 2>&1; then
    echo "BUILD FAILED in $dir"
    grep -E "error|FAILED" "$log" | head -n 40
    return 1
  fi
}

# The SM clock, power and why the clock is held down, twice a second, into $1 until stop_clocks:
# under sustained tensor work the card meets its power limit and lowers the clock, which moves
# every figure.
clock_fields=timestamp,clocks.sm,power.draw,temperature.gpu,power.limit,clocks_event_reasons.sw_power_cap,clocks_event_reasons.hw_slowdown,clocks_event_reasons.sw_thermal_slowdown
nvidia-smi --query-gpu="$clock_fields" --format=csv > /dev/null 2>&1 ||
  clock_fields=timestamp,clocks.sm,power.draw,temperature.gpu
start_clocks() {
  nvidia-smi --query-gpu="$clock_fields" --format=csv,noheader -lms 500 > "$1" &
  clocks_pid=$!
}
stop_clocks() {  # $1: the samples; prints the mean clock under load and how often each limit was active
  kill "$clocks_pid"
  echo "($clock_fields)"
  awk -F', ' '$3 + 0 > 400 { n++; s += $2; t += $4; if ($6 ~ /^Active/) p++; if ($7 ~ /^Active/) h++; if ($8 ~ /^Active/) th++ }
    END { if (n) printf "SM clock while over 400 W: %.0f MHz mean over %d samples, %.0f C mean; power cap active in %d, HW slowdown in %d, thermal in %d\n", s / n, n, t / n, p, h, th
          else print "no sample over 400 W" }' "$1"
}
