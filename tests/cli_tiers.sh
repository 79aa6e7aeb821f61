#!/usr/bin/env bash
# cli_tiers.sh - `spindle run` with tiered KV placement: budgets that force the shallow layers to
# NVMe give the same text as the all-resident run and print the per-tier summary; the JSON
# statistics are written; a device budget too small for the context fails naming the key; an
# unusable spill directory falls back to memory (or fails naming [spill] dir); no spill file is
# ever left behind; decode tails too big for the device budget are refused with the way out.
set -u
bin=${SPINDLE_BIN:?SPINDLE_BIN not set}
model=${SPINDLE_MODEL:?SPINDLE_MODEL not set}
fails=0; passes=0
spill=$(mktemp -d /tmp/sp-cli-tiers-XXXXXX)
trap 'rm -rf "$spill"' EXIT

fail() { echo "FAIL $1"; shift; printf '%s\n' "$@" | tail -8; fails=$((fails + 1)); }

prompt="Note 1: the river near house 7 is quiet. Note 2: the lamp near house 44 is bright. Note 3: the garden near house 81 is quiet. Note 4: the violin near house 17 is bright. Note 5: the harbor near house 23 is quiet. Note 6: the pencil near house 90 is bright. Which house has the lamp?"
# queue_depth 4 x block_size 1 MiB: the spill store's bounce buffers, charged to the host tier
bounce=$((4 * 1048576))
run=("$bin" run -m "$model" -t 2 -n 8 --set compression.window=8 --set spill.dir="$spill" --set spill.queue_depth=4)

# resident reference (no budgets: no tiering)
ref=$("${run[@]}" -p "$prompt" 2>/dev/null) || fail reference "$ref"

# 1. find what the context itself charges to the device (scratch + tails) from the JSON
out=$("${run[@]}" --stats --set tiers.device_budget=1GiB --set runtime.stats_json="$spill/s.json" \
      -p "$prompt" 2>&1 >/dev/null)
if [ $? -ne 0 ] || [ ! -s "$spill/s.json" ]; then
  fail stats-json "$out"
else
  passes=$((passes + 1))
  base=$(sed -E 's/.*"scratch_bytes":([0-9]+),"tail_bytes":([0-9]+).*/\1 \2/' "$spill/s.json")
  scratch=${base% *}; tails=${base#* }
  grep -q '"per_layer":\[{"layer":0,"tier":"device"' "$spill/s.json" || fail json-layers "$(cat "$spill/s.json")"
  # 2. a device budget of scratch + tails + 400 KiB: pinned layers, slots and a few more; the rest spills;
  #    a host budget of the weights + the bounce buffers + 256 KiB sends most of it to nvme
  dev=$((scratch + tails + 400 * 1024))
  host=$(( $(stat -c %s "$model") + bounce + 256 * 1024 ))
  out=$("${run[@]}" --stats --set tiers.device_budget=$dev --set tiers.host_budget=$host \
        --set tiers.resident_deep_layers=2 -p "$prompt" 2>"$spill/err")
  rc=$?
  err=$(cat "$spill/err")
  if [ $rc -ne 0 ]; then
    fail spill-run "$err"
  elif [ "$out" != "$ref" ]; then
    fail spill-same-text "resident: $ref" "spilled: $out"
  elif ! grep -qE '^  nvme +[1-9][0-9]* layers' <<<"$err" || ! grep -q 'prefetch hits' <<<"$err"; then
    fail spill-summary "$err"
  else
    passes=$((passes + 1))
  fi
  # 3. too small for the context's own buffers: refused, naming the key
  out=$("${run[@]}" --set tiers.device_budget=$((scratch / 2)) -p "$prompt" 2>&1)
  rc=$?
  if [ $rc -eq 0 ] || ! grep -q 'device_budget' <<<"$out"; then fail small-device "$out"; else passes=$((passes + 1)); fi
  # 4. a missing spill dir: the layers stay in memory when the host has room (with a notice)
  out=$("$bin" run -m "$model" -t 2 -n 8 --set compression.window=8 --set spill.dir=/nonexistent/sp \
        --set tiers.device_budget=$dev --set tiers.resident_deep_layers=2 --stats -p "$prompt" 2>&1)
  rc=$?
  if [ $rc -ne 0 ] || ! grep -q 'nvme tier unusable' <<<"$out" || ! grep -qE '^  nvme +0 layers' <<<"$out"; then
    fail missing-dir-fallback "$out"
  else
    passes=$((passes + 1))
  fi
  # ... and fails naming [spill] dir when nothing else has room
  out=$("$bin" run -m "$model" -t 2 -n 8 --set compression.window=8 --set spill.dir=/nonexistent/sp \
        --set tiers.device_budget=$dev --set tiers.host_budget=$((host - bounce)) --set tiers.resident_deep_layers=2 \
        -p "$prompt" 2>&1)
  rc=$?
  if [ $rc -eq 0 ] || ! grep -q 'spill' <<<"$out"; then fail missing-dir-refused "$out"; else passes=$((passes + 1)); fi
fi
# 5. unwritable stats_json: the run reports it
out=$("${run[@]}" --set tiers.device_budget=1GiB --set runtime.stats_json=/nonexistent/dir/s.json -p "$prompt" 2>&1)
grep -q 'stats_json' <<<"$out" && passes=$((passes + 1)) || fail json-unwritable "$out"
# 6. a short prompt in a long context: the decode tails for every token left do not fit; the
#    message says why and names both ways out
out=$("${run[@]}" -c 4096 --set tiers.device_budget=24MiB -p "$prompt" 2>&1)
rc=$?
if [ $rc -eq 0 ] || ! grep -q 'tokens left in the context' <<<"$out" || ! grep -q -- '-c / \[model\] n_ctx' <<<"$out" ||
   ! grep -q 'device_budget' <<<"$out"; then
  fail tails-too-big "$out"
else
  passes=$((passes + 1))
fi

left=$(find "$spill" -name 'spindle-*' | wc -l)
[ "$left" -eq 0 ] && passes=$((passes + 1)) || fail leaked-spill-file "$(ls -la "$spill")"

echo "cli_tiers: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
