#!/usr/bin/env bash
# cli_eval.sh - `spindle eval` end to end at tiny sizes: a fidelity run (one text, 256-token prompt,
# 8 teacher-forced tokens, two policies, one byte target) and a retrieval run (300-token prompts,
# depths 0 and 100 %, one seed) write JSON with the machine/commit/model/config blocks, measured
# points bracketing the target, interpolated values, retrieval cells and accuracy grids, the
# frontier table on stdout and the plots through gnuplot; bad options fail with exit 2.
set -u
bin=${SPINDLE_BIN:?SPINDLE_BIN not set}
model=${SPINDLE_MODEL:?SPINDLE_MODEL not set}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
. "$(dirname "$0")/support/cli_lib.sh"

ev=("$bin" eval -m "$model" -t 2)
expect bad-text 2 "unknown text 'shakespeare'" -- "${ev[@]}" --texts shakespeare
expect bad-policy 2 "lru" -- "${ev[@]}" --policies snapkv,lru
expect bad-target 2 "out of range" -- "${ev[@]}" --targets 0.2,1.5
expect bad-depth 2 "out of range" -- "${ev[@]}" --depths 0,120
expect bad-option 2 "unknown option" -- "${ev[@]}" --frobnicate
expect bad-task 2 "unknown task 'needles'" -- "${ev[@]}" --tasks passkey,needles
expect bad-template 2 "needs .key. and .value." -- "${ev[@]}" --template 'multikey.needle=The number is {value}.'
expect bad-template-field 2 "unknown template field" -- "${ev[@]}" --template 'vartrack.colour=x'
expect passkey-template 2 "passkey texts are fixed" -- "${ev[@]}" --template 'passkey.intro=x'
expect bad-keys 2 "out of range" -- "${ev[@]}" --keys 17

plots=$("$bin" eval --help | grep -c gnuplot)
[ "$plots" -ge 1 ] || fail "help does not mention the plots"

out=$("${ev[@]}" --texts pg --lengths 256 --tokens 8 --targets 0.3 --policies snapkv,spindle \
      --ret-lengths 300 --depths 0,100 --seeds 1 --ret-targets 0.3 --json "$tmp/e.json" --out "$tmp/plots" \
      2>"$tmp/err")
rc=$?
if [ "$rc" -ne 0 ]; then
  fail "tiny run: exit $rc"; tail -5 "$tmp/err"
else
  passes=$((passes + 1))
  grep -q '| snapkv |' <<<"$out" || fail "no frontier table on stdout"
  grep -q '| full | 1 |' <<<"$out" || fail "no retrieval table on stdout"
  grep -q 'fidelity pg N=256' "$tmp/err" || fail "no progress on stderr"
  for p in quality_kl quality_top1 quality_ppl retrieval; do
    [ -s "$tmp/plots/$p.png" ] || fail "plot $p.png missing"
  done
  python3 - "$tmp/e.json" <<'EOF' || fail "JSON content"
import json, math, sys
d = json.load(open(sys.argv[1]))
def need(cond, msg):
    if not cond:
        print("JSON:", msg); sys.exit(1)
need(d["bench"] == "spindle eval", "bench name")
for k in ("date", "commit", "machine", "model", "config", "fidelity", "frontier", "retrieval"):
    need(k in d, "missing " + k)
need(d["machine"]["cores_online"] >= 1, "machine cores")
need(d["model"]["n_layer"] == 30 and d["model"]["n_kv_head"] == 3, "model shape")
need(d["config"]["targets"] == [0.3] and d["config"]["policies"] == ["snapkv", "spindle"], "config lists")
fid = d["fidelity"]
need(len(fid) == 1 and fid[0]["text"] == "pg" and fid[0]["n_prompt"] == 256 and fid[0]["n_tokens"] == 8, "fidelity run")
need(abs(fid[0]["full"]["true_ratio"] - 1.0) < 1e-9, "full true ratio is not 1")
need(fid[0]["full"]["ppl"] > 1.0, "full ppl")
pols = fid[0]["policies"]
need([p["policy"] for p in pols] == ["snapkv", "spindle"], "policies")
for p in pols:
    pts = p["points"]
    need(1 <= len(pts) <= 2 and pts[0]["side"] == 0, p["policy"] + ": one point per target, plus a bracket point")
    for q in pts:
        need(0.0 < q["true_ratio"] < 1.0, "true ratio in (0,1)")
        need(abs(q["true_ratio"] - q["bytes"] / q["fp16_bytes"]) < 1e-4, "true ratio = bytes / fp16 bytes")
        need(q["kl"] >= 0.0 and 0.0 <= q["top1"] <= 1.0 and q["ppl"] > 1.0, "metric ranges")
        need(len(q["probes"]) >= 1, "probes listed")
        if q["hit"]:
            lo, hi = {0: (0.29, 0.31), -1: (0.29, 0.3), 1: (0.3, 0.31)}[q["side"]]
            need(lo - 1e-9 <= q["true_ratio"] <= hi + 1e-9, "hit point inside its window")
    if all(q["hit"] for q in pts):
        need(min(q["true_ratio"] for q in pts) <= 0.3 <= max(q["true_ratio"] for q in pts), "target bracketed")
    at = p["at_targets"][0]
    xs = sorted(q["true_ratio"] for q in pts)
    if xs[0] <= 0.3 <= xs[-1]:
        kls = [q["kl"] for q in pts]
        need(at["kl"] is not None and min(kls) - 1e-9 <= at["kl"] <= max(kls) + 1e-9, "interpolated KL between points")
    else:
        need(at["kl"] is None, "no extrapolation")
need(len(d["frontier"]) == 2, "frontier rows")
ret = d["retrieval"]
need(ret["lengths"] == [300] and ret["depths"] == [0, 1] and ret["seeds_per_cell"] == 1, "retrieval config")
need(len(ret["cells"]) == 2, "retrieval cells")
for c in ret["cells"]:
    need(len(c["passkey"]) == 5 and c["passkey"].isdigit(), "passkey")
    need(c["n_prompt"] <= 300, "prompt within its length")
    need([r["policy"] for r in c["results"]] == ["full", "snapkv", "spindle"], "results per policy")
    for r in c["results"]:
        need(isinstance(r["correct"], bool) and isinstance(r["answer"], str), "answer fields")
        if r["correct"]:
            need(c["passkey"] in r["answer"], "a correct answer contains the passkey")
need(c["needle_token"] > d["retrieval"]["cells"][0]["needle_token"], "depth 100 % needle after depth 0 %")
acc = ret["accuracy"]
need([a["policy"] for a in acc] == ["full", "snapkv", "spindle"], "accuracy rows")
for a in acc:
    need(len(a["grid"]) == 1 and len(a["grid"][0]) == 2, "grid shape")
EOF
fi

# The default policy list, retrieval only, one tiny cell: every curve is labelled with its policy.
if "${ev[@]}" --retrieval --ret-lengths 200 --depths 50 --seeds 1 --ret-targets 0.5 --json "$tmp/d.json" \
     >/dev/null 2>"$tmp/err2"; then
  python3 - "$tmp/d.json" <<'EOF2' || fail "default policies JSON"
import json, sys
d = json.load(open(sys.argv[1]))
want = ["streaming", "h2o", "snapkv", "pyramidkv", "pyramidinfer", "spindle"]
if d["config"]["policies"] != want or [a["policy"] for a in d["retrieval"]["accuracy"]] != ["full"] + want:
    print("JSON: default policy labels", d["config"]["policies"]); sys.exit(1)
if d["fidelity"] != []:
    print("JSON: --retrieval ran the fidelity part"); sys.exit(1)
EOF2
else
  fail "default policies run"; tail -3 "$tmp/err2"
fi

# The RULER-style tasks, tiny: one multivalue and one vartrack prompt with a custom needle, the
# JSON "tasks" block beside "retrieval" (no passkey run: its cells are empty).
if "${ev[@]}" --retrieval --tasks multivalue,vartrack --values 3 --hops 2 --task-tokens 6 --ret-lengths 300 \
     --depths 50 --seeds 1 --policies snapkv --ret-targets 0.3 \
     --template 'multivalue.needle=The code of {key} is {value}.' --json "$tmp/t.json" >"$tmp/tout" 2>"$tmp/err3"; then
  grep -q '| multivalue | snapkv | 0.30 |' "$tmp/tout" || fail "no task table on stdout"
  python3 - "$tmp/t.json" <<'EOF3' || fail "tasks JSON"
import json, sys
d = json.load(open(sys.argv[1]))
def need(cond, msg):
    if not cond:
        print("JSON:", msg); sys.exit(1)
need(d["retrieval"]["cells"] == [], "passkey ran without being asked")
t = d["tasks"]
need([r["task"] for r in t["run"]] == ["multivalue", "vartrack"], "task runs")
need(t["run"][0]["needle"] == "The code of {key} is {value}." and t["run"][0]["needles"] == 3, "multivalue config")
need(t["run"][1]["needles"] == 2, "vartrack hops")
for r in t["run"]:
    need([s["policy"] for s in r["summary"]] == ["full", "snapkv"], "summary rows")
    need(r["summary"][0]["same_text_as_full"] == 1 and r["summary"][0]["prompts"] == 1, "full agrees with itself")
need(len(t["cells"]) == 2, "task cells")
for c in t["cells"]:
    need(len(c["answers"]) == (3 if c["task"] == "multivalue" else 2), "answers per cell")
    need(c["n_prompt"] <= 300 and 0 < c["needle_token"] < c["n_prompt"], "prompt length and needle position")
    for r in c["results"]:
        need(0 <= r["found"] <= len(c["answers"]) and r["correct"] == (r["found"] == len(c["answers"])), "found / correct")
        need(r["found"] == sum(a in r["answer"] for a in c["answers"]), "found = answers in the continuation")
EOF3
  passes=$((passes + 1))
else
  fail "tasks run"; tail -3 "$tmp/err3"
fi

echo "cli_eval: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
