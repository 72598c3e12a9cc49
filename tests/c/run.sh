#!/usr/bin/env bash
# C and C++ checks of the recsync C ABI: the header compiles alone and
# included twice as C11 and C++17, and the smoke programs link against the
# static library and pass (the C one also under valgrind, and under
# AddressSanitizer where the compiler has it).
#
# Usage: tests/c/run.sh            (debug build of recsync-ffi)
#        PROFILE=release tests/c/run.sh
# CC and CXX pick the compilers (default cc and c++); CARGO_TARGET_DIR is
# honoured. The last line is "N passed, M failed"; the exit status is
# non-zero if anything failed.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
profile="${PROFILE:-debug}"
cc="${CC:-cc}"
cxx="${CXX:-c++}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
lib="$target_dir/$profile/librecsync.a"
include="$root/include"
src="$root/tests/c"

warn=(-Wall -Wextra -Werror -pedantic)
cflags=(-std=c11 "${warn[@]}" -Wstrict-prototypes -g -I"$include")
cxxflags=(-std=c++17 "${warn[@]}" -g -I"$include")
libs=(-lpthread -ldl -lm)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

case "$profile" in
  debug) cargo_profile=() ;;
  release) cargo_profile=(--release) ;;
  *) echo "PROFILE must be debug or release, not '$profile'" >&2; exit 2 ;;
esac
(cd "$root" && cargo build -p recsync-ffi "${cargo_profile[@]}")
[[ -f "$lib" ]] || { echo "no static library at $lib" >&2; exit 2; }

passed=0
failed=0

# check NAME COMMAND...: runs COMMAND with errexit on and counts the result.
check() {
  local name="$1"
  shift
  set +e
  (set -e; "$@")
  local status=$?
  set -e
  if [[ $status -eq 0 ]]; then
    passed=$((passed + 1))
    echo "PASS $name"
  else
    failed=$((failed + 1))
    echo "FAIL $name (exit $status)"
  fi
}

header_twice_c() {
  printf '#include "recsync.h"\n#include "recsync.h"\n' >"$work/twice.c"
  "$cc" "${cflags[@]}" -c "$work/twice.c" -o "$work/twice_c.o"
}

header_twice_cxx() {
  printf '#include "recsync.h"\n#include "recsync.h"\n' >"$work/twice.cpp"
  "$cxx" "${cxxflags[@]}" -c "$work/twice.cpp" -o "$work/twice_cxx.o"
}

smoke_c() {
  "$cc" "${cflags[@]}" "$src/smoke.c" "$lib" "${libs[@]}" -o "$work/smoke_c"
  "$work/smoke_c"
}

smoke_cxx() {
  "$cxx" "${cxxflags[@]}" "$src/smoke.cpp" "$lib" "${libs[@]}" -o "$work/smoke_cxx"
  "$work/smoke_cxx"
}

smoke_c_valgrind() {
  valgrind --quiet --error-exitcode=1 --leak-check=full "$work/smoke_c"
}

smoke_c_asan() {
  "$cc" "${cflags[@]}" -fsanitize=address,undefined -fno-omit-frame-pointer \
    "$src/smoke.c" "$lib" "${libs[@]}" -o "$work/smoke_c_asan"
  ASAN_OPTIONS=detect_leaks=1 "$work/smoke_c_asan"
}

# Does the compiler build and run an AddressSanitizer program here?
have_asan() {
  printf 'int main(void) { return 0; }\n' >"$work/asan_probe.c"
  "$cc" -fsanitize=address,undefined "$work/asan_probe.c" -o "$work/asan_probe" \
    >/dev/null 2>&1 && "$work/asan_probe" >/dev/null 2>&1
}

check "header alone, included twice, C11" header_twice_c
check "header alone, included twice, C++17" header_twice_cxx
check "smoke.c (C11, static library)" smoke_c
check "smoke.cpp (C++17, static library)" smoke_cxx
if command -v valgrind >/dev/null 2>&1; then
  check "smoke.c under valgrind" smoke_c_valgrind
else
  echo "SKIP smoke.c under valgrind (valgrind not installed)"
fi
if have_asan; then
  check "smoke.c under AddressSanitizer+UBSan" smoke_c_asan
else
  echo "SKIP smoke.c under AddressSanitizer (not supported by $cc here)"
fi

echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
