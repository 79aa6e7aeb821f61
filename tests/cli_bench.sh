#!/usr/bin/env bash
# cli_bench.sh - `spindle bench`: bad options fail naming the option (exit 2); --kv-ratio prints the
# compressed decode figure beside the full cache of the same depth fill, lands on the requested true
# bytes, and writes both into the JSON.
set -u
bin=${SPINDLE_BIN:?SPINDLE_BIN not set}
model=${SPINDLE_MODEL:?SPINDLE_MODEL not set}
. "$(dirname "$0")/support/cli_lib.sh"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

bench=("$bin" bench -m "$model" -t 2 --llama-bench none -r 1 --tg 4)
expect bad-depths 2 "depths" -- "${bench[@]}" --depths 12,x
expect ratio-out-of-range 2 "kv-ratio" -- "${bench[@]}" --kv-ratio 1.5
expect ratio-with-full 2 "policy=full" -- "${bench[@]}" --kv-ratio 0.2 --set compression.policy=full
expect depth-too-short 2 "too short to compress" -- "${bench[@]}" --kv-ratio 0.2 --depths 40
expect compressed-row 0 "ctg4 @ d384 \| [0-9.]+ ± [0-9.]+ \|" -- "${bench[@]}" --pp 0 --depths 384 --kv-ratio 0.3 \
  --json "$tmp/b.json"
if ! python3 - "$tmp/b.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["rows"][0]
assert r["depth"] == 384 and r["ctg_tps"] > 0 and r["tg_tps"] > 0, r
assert "pp_tps" not in r, r                      # --pp 0: no prefill figure
assert abs(r["kv_true_ratio"] - 0.3) <= 0.01, r  # target = bytes: the requested true bytes
assert r["kv_mib"] < r["kv_full_mib"], r
PY
then fail json-fields; else passes=$((passes + 1)); fi

echo "cli_bench: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
