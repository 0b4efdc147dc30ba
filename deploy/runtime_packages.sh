#!/usr/bin/env bash
# Prints, one a line as name=version, the installed packages that own the shared libraries the
# given binaries load (ldd), so that the image's run stage installs exactly those and nothing of
# the build's -dev packages. Run in the build stage; the run stage apt-get installs the list.
# Package names differ between distributions (libcpp-httplib0.11 on Debian 12, another soname on
# Ubuntu 24.04): asking dpkg who owns each file keeps this list free of names written by hand.
# Libraries of the CUDA toolkit are left out: the run stage's nvidia/cuda runtime image has them.
# Fails when a library is not found or belongs to no package (copied in by hand: the run stage
# would lack it).
# Usage: deploy/runtime_packages.sh BINARY...
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }

# dpkg records a file under the path its package ships it at; with merged /usr that may be /lib
# while ldd says /usr/lib, or the reverse, and symlinks (alternatives) point elsewhere again.
candidates() {
  local path="$1" real
  real="$(readlink -f "$path")"
  printf '%s\n' "$path" "$real" "${path#/usr}" "${real#/usr}" "/usr$path" "/usr$real"
}

status=0
libs="$(ldd "$@" | awk '/=>/ { print $1, $3 }' | sort -u)"
if grep -q " not$" <<< "$libs"; then
  echo "runtime_packages: not found: $(grep ' not$' <<< "$libs" | cut -d' ' -f1 | tr '\n' ' ')" >&2
  status=1
fi
declare -A owner_of
# One dpkg query for every candidate path ("pkg: /path" lines; unknown paths only complain).
while IFS= read -r line; do
  owner_of["${line#*: }"]="${line%%: *}"
done < <(while read -r _ path; do [ "$path" = not ] || candidates "$path"; done <<< "$libs" \
           | sort -u | xargs -r dpkg-query -S 2>/dev/null || true)
pkgs=()
while read -r name path; do
  [ "$path" = not ] && continue
  # The CUDA runtime libraries (cudart, cuBLAS) come with the run stage's nvidia/cuda base image.
  case "$(readlink -f "$path")" in /usr/local/cuda*) continue ;; esac
  pkg=""
  while read -r candidate; do
    [ -n "${owner_of[$candidate]:-}" ] && { pkg="${owner_of[$candidate]%%,*}"; break; }
  done < <(candidates "$path")
  if [ -n "$pkg" ]; then
    pkgs+=("${pkg%%:*}")
  else
    echo "runtime_packages: $name ($path) belongs to no package" >&2
    status=1
  fi
done <<< "$libs"
[ $status = 0 ] || exit $status
printf '%s\n' "${pkgs[@]}" | sort -u | xargs dpkg-query -W -f='${Package}=${Version}\n'
