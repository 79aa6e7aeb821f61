#!/usr/bin/env bash
# cli_kv.sh - `spindle run` with KV compression: bad compression knobs fail with a message naming the
# knob (exit 2); --stats prints the per-layer table and the totals; a prompt shorter than the window
# runs with a notice (documented fallback).
set -u
bin=${SPINDLE_BIN:?SPINDLE_BIN not set}
model=${SPINDLE_MODEL:?SPINDLE_MODEL not set}
. "$(dirname "$0")/support/cli_lib.sh"

run=("$bin" run -m "$model" -t 2 -n 4)
prompt="Note 1: the river near house 7 is quiet. Note 2: the lamp near house 44 is bright. Note 3: the garden near house 81 is quiet. Note 4: the violin near house 17 is bright. Which house has the lamp?"
expect unknown-policy 2 "policy.*lru" -- "${run[@]}" --set compression.policy=lru -p hi
expect unknown-allocator 2 "allocator.*fancy" -- "${run[@]}" --set compression.allocator=fancy -p hi
expect ratio-zero 2 "ratio" -- "${run[@]}" --set compression.ratio=0 -p hi
expect ratio-above-one 2 "ratio" -- "${run[@]}" --set compression.ratio=1.5 -p hi
expect theta-negative 2 "theta_k" -- "${run[@]}" --set compression.theta_k=-0.5 -p hi
expect theta-too-big 2 "theta_v" -- "${run[@]}" --set compression.theta_v=3 -p hi
expect window-fallback 0 "not longer than window" -- "${run[@]}" --set compression.window=512 -p "$prompt"
expect stats-table 0 "^total .* 0\.[0-9]{3} +0\.[0-9]{3}$" -- "${run[@]}" --stats --set compression.window=8 -p "$prompt"
expect stats-layers 0 "^ +29 +[0-9]+ +[0-9]+ " -- "${run[@]}" --stats --set compression.window=8 -p "$prompt"
expect stats-full 0 "fp16, uncompressed" -- "${run[@]}" --stats --set compression.policy=full -p "$prompt"

echo "cli_kv: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
