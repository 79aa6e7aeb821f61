#!/usr/bin/env bash
# example_install.sh - install the library into a fresh prefix, build tests/example/example.c
# against it with pkg-config only (no include path of the source tree), and run it on the model.
set -euo pipefail
build=${SPINDLE_BUILD_DIR:?SPINDLE_BUILD_DIR not set}
src=${SPINDLE_SOURCE_DIR:?SPINDLE_SOURCE_DIR not set}
model=${SPINDLE_MODEL:?SPINDLE_MODEL not set}
prefix=$(mktemp -d /tmp/sp-install-XXXXXX)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
test -f "$prefix/include/spindle.h"
test -f "$prefix/lib/pkgconfig/spindle.pc"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
# shellcheck disable=SC2046
cc -std=c11 -Wall -Werror -o "$prefix/example" "$src/tests/example/example.c" \
  $(pkg-config --cflags spindle) $(pkg-config --libs spindle)
out=$("$prefix/example" "$model")
echo "$out"
grep -q "tokens generated" <<<"$out"
echo "example_install: 1 passed, 0 failed"
