#!/usr/bin/env bash
# Builds the llama.cpp oracle used to generate spindle's reference fixtures.
# llama.cpp is taken only from the llama-cpp-python PyPI sdist (never committed):
#   (a) venv ~/.cache/spindle/oracle-venv with numpy, gguf and llama-cpp-python
#       built from the sdist (CPU, GGML_NATIVE=ON, 2 jobs);
#   (b) llama-bench built with cmake from the sdist's
#       vendor/llama.cpp into ~/.cache/spindle/llama.cpp-build.
# Idempotent: each step is skipped when its product already exists.
# Usage: scripts/oracle/build_llama.sh [--python-only|--tools-only]
set -euo pipefail

CACHE=${SPINDLE_CACHE:-$HOME/.cache/spindle}
VER=0.3.36
SDIST=$CACHE/dl/llama_cpp_python-$VER.tar.gz
VENV=$CACHE/oracle-venv
SRC=$CACHE/llama-cpp-python-$VER
BUILD=$CACHE/llama.cpp-build
JOBS=${JOBS:-2}
MODE=${1:-all}

mkdir -p "$CACHE/dl"
if [ ! -f "$SDIST" ]; then
    # Fresh machine: fetch the sdist through pip (the ordinary client).
    python3 -m pip download --no-deps --no-binary :all: -d "$CACHE/dl" "llama-cpp-python==$VER"
fi

# Unpacked source (for the cmake tool build and for recording the version).
if [ ! -f "$SRC/vendor/llama.cpp/CMakeLists.txt" ]; then
    rm -rf "$SRC.tmp" && mkdir -p "$SRC.tmp"
    tar xzf "$SDIST" -C "$SRC.tmp"
    mv "$SRC.tmp/llama_cpp_python-$VER" "$SRC" && rm -rf "$SRC.tmp"
fi

if [ "$MODE" != "--tools-only" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    if ! "$VENV/bin/python" -c "import llama_cpp, gguf, numpy; assert llama_cpp.__version__ == '$VER'" 2>/dev/null; then
        "$VENV/bin/pip" install -q numpy gguf
        t0=$(date +%s)
        CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$JOBS \
            "$VENV/bin/pip" install --no-cache-dir -v "$SDIST" > "$CACHE/oracle-pip-build.log" 2>&1 \
            || { tail -40 "$CACHE/oracle-pip-build.log"; exit 1; }
        echo "llama-cpp-python build took $(( $(date +%s) - t0 )) s (log: $CACHE/oracle-pip-build.log)"
    fi
fi

if [ "$MODE" != "--python-only" ]; then
    if [ ! -x "$BUILD/bin/llama-bench" ]; then
        t0=$(date +%s)
        cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
            -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
            -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF > "$CACHE/oracle-cmake-build.log" 2>&1
        cmake --build "$BUILD" -j"$JOBS" --target llama-bench \
            >> "$CACHE/oracle-cmake-build.log" 2>&1 || { tail -40 "$CACHE/oracle-cmake-build.log"; exit 1; }
        echo "llama.cpp tools build took $(( $(date +%s) - t0 )) s (log: $CACHE/oracle-cmake-build.log)"
    fi
fi

# Record what llama.cpp this is: the sdist has no .git, so use the version
# the build system derives plus the llama-cpp-python release it came with.
{
    echo "llama-cpp-python $VER (PyPI sdist $(sha256sum "$SDIST" | cut -c1-16))"
    if [ -x "$BUILD/bin/llama-bench" ]; then "$BUILD/bin/llama-bench" --version 2>&1 | head -2; fi
    grep -h -m1 -E 'LLAMA_INSTALL_VERSION|BUILD_NUMBER' "$SRC/vendor/llama.cpp/CMakeLists.txt" 2>/dev/null || true
} > "$CACHE/oracle-version.txt"
echo "venv:        $VENV/bin/python"
echo "llama-bench: $BUILD/bin/llama-bench"
echo "version:     $(head -1 "$CACHE/oracle-version.txt")"
cat "$CACHE/oracle-version.txt" | tail -n +2
