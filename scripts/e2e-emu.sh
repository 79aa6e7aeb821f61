#!/usr/bin/env bash
# e2e-emu.sh - issue 11 item 4 on the CPU emulation of CUDA: the default model, --backend cuda against
# --backend cpu (exact numerics), 64 greedy tokens, full cache and spindle compression (the prompt of
# scripts/gpu-check.sh). About 20 minutes on 2 cores (the emulated run is ~3.7 s per token).
# Usage: scripts/e2e-emu.sh [LOGDIR (/tmp/e2e)]; needs build-emu (-DSPINDLE_CUDA_EMU=ON, Release).
cd "$(dirname "$0")/.."
M=${SPINDLE_CACHE:-$HOME/.cache/spindle}/models/SmolLM2-135M-Instruct.Q4_1.gguf
B=build-emu/spindle
P="A printing shop in the fifteenth century was loud and crowded. Apprentices mixed ink from soot \
and linseed oil, compositors picked metal letters from wooden cases, and the pressman pulled the bar of \
the press again and again until his arms ached. Paper was costly, so every sheet was checked for faults \
before it was printed. The master of the shop"
L=${1:-/tmp/e2e}; mkdir -p "$L"; rm -f "$L/status"
git rev-parse HEAD > $L/commit
for be in cpu cuda; do
  /usr/bin/time -v $B run --set runtime.numerics=exact --set compression.window=16 -n 64 --temp 0 -m $M --stats -p "$P" -b $be > $L/kv-$be.txt 2> $L/kv-$be.err
  echo "kv $be rc=$?" >> $L/status
done
cmp $L/kv-cpu.txt $L/kv-cuda.txt && echo "kv SAME" >> $L/status || echo "kv DIFFER" >> $L/status
for be in cpu cuda; do
  $B run --set compression.policy=full --set runtime.numerics=exact -n 64 --temp 0 -m $M -p "The history of the printing press begins" -b $be > $L/full-$be.txt 2> $L/full-$be.err
  echo "full $be rc=$?" >> $L/status
done
cmp $L/full-cpu.txt $L/full-cuda.txt && echo "full SAME" >> $L/status || echo "full DIFFER" >> $L/status
echo done >> $L/status
