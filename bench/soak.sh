#!/usr/bin/env bash
# soak.sh - reliability soak of `spindle run` with tiered KV placement (issue 14; not run by CI).
#
# RUNS consecutive runs, each with a random prompt length, KV policy, device/host budgets,
# prefetch depth, resident deep layers and spill queue depth, compared with a resident run (no
# budgets: nothing spills) of the same prompt and policy. Reports:
#   mismatches   spilled text != resident text (goal 0)
#   refused      spilled run failed with a message (a budget too small for this prompt: allowed)
#   silent       a run failed without a "spindle:" message, or hung (timeout) (goal 0)
#   leftovers    files left in the spill directory after a run (goal 0)
#   peak RSS     against device_budget + host_budget: the excess over the budgets, max and mean
#                (the constant: code, libraries, tokenizer, OpenBLAS and stack, none of them tiered)
# Usage: bench/soak.sh [RUNS (200)] [SEED (1)]    env: SPINDLE_BIN, SPINDLE_MODEL, SPINDLE_SHARED
# Per-run rows go to $OUT (default bench/results/soak.tsv), the summary to stdout.
set -u
here=$(cd "$(dirname "$0")" && pwd)
runs=${1:-200}
RANDOM=${2:-1}
bin=${SPINDLE_BIN:-$here/../build/spindle}
model=${SPINDLE_MODEL:-$HOME/.cache/spindle/models/SmolLM2-135M-Instruct.Q4_1.gguf}
shared=${SPINDLE_SHARED:-$here/../../shared}
out=${OUT:-$here/results/soak.tsv}
spill=$(mktemp -d /tmp/sp-soak-XXXXXX)
trap 'rm -rf "$spill"' EXIT

text="$spill/text.txt"
if ls "$shared"/data/haystack/pg_essays/*.txt >/dev/null 2>&1; then
  cat "$shared"/data/haystack/pg_essays/*.txt | tr -d '\000' >"$text"
else
  for i in $(seq 1 4000); do echo "Item $i of the list is a harbor near house $((i * 7 % 97))."; done >"$text"
fi
text_bytes=$(stat -c %s "$text")
weights=$(stat -c %s "$model")
policies=(spindle snapkv pyramidkv h2o streaming full)
qds=(1 2 4 8 16)

rss_mib() { sed -nE 's/^memory +peak RSS ([0-9.]+) MiB.*/\1/p' "$1"; }
echo -e "run\tpolicy\tprompt_bytes\tdevice_mib\thost_mib\tprefetch\tresident\tqd\tresult\tspill_rss_mib\tbudget_mib\texcess_mib\tleft" >"$out"
mism=0; refused=0; silent=0; left_total=0; ok=0; max_ex=-1e9; sum_ex=0; n_ex=0; t0=$(date +%s)
for r in $(seq 1 "$runs"); do
  pol=${policies[RANDOM % ${#policies[@]}]}
  bytes=$((200 + RANDOM % 2400))                     # ~50..650 tokens
  start=$(( (RANDOM * 32768 + RANDOM) % (text_bytes - bytes) ))
  tail -c +$((start + 1)) "$text" | head -c "$bytes" >"$spill/p.txt"
  dev=$((20 + RANDOM % 45))                          # MiB
  pd=$((RANDOM % 5)); res=$((RANDOM % 9)); qd=${qds[RANDOM % ${#qds[@]}]}
  host=$(( (weights + qd * 1048576) / 1048576 + 1 + RANDOM % 16 ))   # weights + bounce + 1..16 MiB
  common=("$bin" run -m "$model" -t 2 -n 12 --set compression.policy="$pol" -f "$spill/p.txt")
  timeout -k 5 600 "${common[@]}" >"$spill/ref.out" 2>"$spill/ref.err"; rrc=$?
  timeout -k 5 600 "${common[@]}" --set tiers.device_budget=${dev}MiB --set tiers.host_budget=${host}MiB \
    --set spill.prefetch_depth=$pd --set tiers.resident_deep_layers=$res --set spill.queue_depth=$qd \
    --set spill.dir="$spill/d" >"$spill/sp.out" 2>"$spill/sp.err"; src=$?
  mkdir -p "$spill/d"
  left=$(find "$spill/d" -mindepth 1 | wc -l); left_total=$((left_total + left)); rm -rf "$spill/d"/*
  result=ok; rss=""; ex=""
  if [ $rrc -ne 0 ]; then
    grep -q '^spindle: ' "$spill/ref.err" && result=ref-refused || { result=silent; silent=$((silent + 1)); }
  elif [ $src -eq 124 ] || [ $src -eq 137 ] || { [ $src -ne 0 ] && ! grep -q '^spindle: ' "$spill/sp.err"; }; then
    result=silent; silent=$((silent + 1))
  elif [ $src -ne 0 ]; then
    result=refused; refused=$((refused + 1))
  elif ! cmp -s "$spill/ref.out" "$spill/sp.out"; then
    result=mismatch; mism=$((mism + 1))
  else
    ok=$((ok + 1))
  fi
  if [ $src -eq 0 ]; then
    rss=$(rss_mib "$spill/sp.err")
    ex=$(awk -v a="$rss" -v b=$((dev + host)) 'BEGIN { printf "%.1f", a - b }')
    max_ex=$(awk -v a="$ex" -v m="$max_ex" 'BEGIN { print (a > m ? a : m) }')
    sum_ex=$(awk -v a="$ex" -v s="$sum_ex" 'BEGIN { print s + a }'); n_ex=$((n_ex + 1))
  fi
  echo -e "$r\t$pol\t$bytes\t$dev\t$host\t$pd\t$res\t$qd\t$result\t$rss\t$((dev + host))\t$ex\t$left" >>"$out"
  [ "$result" = mismatch ] && { echo "run $r: mismatch"; diff "$spill/ref.out" "$spill/sp.out" | head -4; }
  [ "$result" = silent ] && { echo "run $r: silent failure (exit $rrc/$src)"; tail -2 "$spill/sp.err"; }
done
mean_ex=$(awk -v s="$sum_ex" -v n=$n_ex 'BEGIN { printf "%.1f", n ? s / n : 0 }')
echo "soak: $runs runs in $(( $(date +%s) - t0 )) s: $ok identical to resident, $mism mismatches, $refused refused" \
     "with a message, $silent silent failures/hangs, $left_total leftover files; peak RSS - (device +" \
     "host budget): max $max_ex MiB, mean $mean_ex MiB over $n_ex completed spill runs (rows: $out)"
