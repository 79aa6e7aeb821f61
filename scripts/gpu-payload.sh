#!/usr/bin/env bash
# gpu-payload.sh - cut the default model into two git-ignored chunks under gpu-payload/ (each under
# the device tool's 64 MiB per call), for scripts/gpu-check.sh to reassemble on the GPU machine.
# The device session then makes two calls: one that carries gpu-payload/part1 (command: true), one
# that carries gpu-payload/part2 and runs the check; part1 stays on the warm machine in between.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-${SPINDLE_CACHE:-$HOME/.cache/spindle}/models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -f "$model" ] || { echo "gpu-payload: no model at $model (run scripts/setup.sh first)" >&2; exit 1; }
mkdir -p gpu-payload
size=$(stat -c %s "$model")
half=$(( (size + 1) / 2 ))
head -c "$half" "$model" > gpu-payload/part1
tail -c +"$((half + 1))" "$model" > gpu-payload/part2
echo "gpu-payload: $model -> gpu-payload/part1 ($half bytes), part2 ($((size - half)) bytes)"
