#!/usr/bin/env bash
# cli_iobench.sh - `spindle io-bench`: a small run without fio succeeds, leaves no file behind, and
# writes JSON with exactly the expected rows (engines x ops x blocks x queue depths, pread at QD 1
# only), per-repeat samples and the machine/config blocks; bad options fail with exit 2 and a
# message that names the problem.
set -u
bin=${SPINDLE_BIN:?SPINDLE_BIN not set}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/spill"
. "$(dirname "$0")/support/cli_lib.sh"

# A small grid. --set makes (1 MiB, QD 4) the target cell: the [spill] keys must reach io-bench.
out=$("$bin" io-bench --dir "$tmp/spill" --size 4MiB --blocks 64KiB,1MiB --qd 1,4 --repeats 2 \
      --engines direct,buffered,pread --no-fio --set spill.queue_depth=4 --json "$tmp/r.json" 2>"$tmp/err")
rc=$?
if [ "$rc" -ne 0 ]; then
  fail "small run: exit $rc"; cat "$tmp/err"
else
  passes=$((passes + 1))
  grep -q 'ours GB/s' <<<"$out" || fail "small run: no table on stdout"
  grep -q 'io_uring' "$tmp/err" || fail "small run: no progress on stderr"
  [ -z "$(ls -A "$tmp/spill")" ] || fail "small run left files: $(ls "$tmp/spill")"
  # O_DIRECT is skipped (with a notice) where the file system refuses it, e.g. tmpfs.
  direct=1
  grep -q 'skipping io_uring+O_DIRECT' "$tmp/err" && direct=0
  if python3 - "$tmp/r.json" "$direct" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
direct = sys.argv[2] == "1"
errs = []
want = set()
for eng in (["direct"] if direct else []) + ["buffered"]:
    for op in ("read", "write"):
        for b in (65536, 1048576):
            for q in (1, 4):
                want.add((eng, op, b, q))
for op in ("read", "write"):
    for b in (65536, 1048576):
        want.add(("pread", op, b, 1))
rows = d["rows"]
got = [(r["engine"], r["op"], r["block"], r["qd"]) for r in rows]
if sorted(got) != sorted(want):
    errs.append("rows %s, want %s" % (sorted(got), sorted(want)))
for r in rows:
    if not r["ours_mean_gbs"] > 0 or len(r["ours_gbs"]) != 2 or min(r["ours_gbs"]) <= 0:
        errs.append("bad samples in %s" % r)
    if r["fio_mean_gbs"] is not None or r["ratio"] is not None or r["fio_gbs"] is not None:
        errs.append("--no-fio row has fio numbers: %s" % r)
targets = [r for r in rows if r["target"]]
if direct and [(t["engine"], t["op"], t["block"], t["qd"]) for t in targets] != [("direct", "read", 1048576, 4)]:
    errs.append("target rows %s" % targets)
for k in ("cpu", "kernel", "filesystem", "fio"):
    if k not in d["machine"]:
        errs.append("machine.%s missing" % k)
if not d["git_commit"]:
    errs.append("empty git_commit")
c = d["config"]
if c["file_size"] != 4 << 20 or c["repeats"] != 2 or c["fio"] is not False or c["queue_depths"] != [1, 4]:
    errs.append("config %s" % c)
if c["target"] != {"engine": "direct", "op": "read", "block": 1048576, "qd": 4}:
    errs.append("config.target %s" % c["target"])
if errs:
    print("\n".join(errs))
sys.exit(1 if errs else 0)
PY
  then passes=$((passes + 1)); else fail "json content"; fi
fi

# Only reads, one engine: the op filter holds.
"$bin" io-bench --dir "$tmp/spill" --size 2MiB --blocks 128KiB --qd 2 --repeats 1 --engines buffered \
  --ops read --no-fio --json "$tmp/r2.json" >/dev/null 2>&1 &&
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["rows"]; sys.exit(0 if [(x["engine"],x["op"]) for x in r]==[("buffered","read")] else 1)' "$tmp/r2.json" &&
  passes=$((passes + 1)) || fail "--ops read --engines buffered"

io=(io-bench --dir "$tmp/spill" --size 2MiB --repeats 1 --no-fio)
expect unknown-engine 2 "unknown engine 'nvme'" -- "$bin" "${io[@]}" --engines direct,nvme
expect qd-zero 2 '--qd: 0 is out of range' -- "$bin" "${io[@]}" --qd 0
expect qd-not-number 2 "--qd: 'x' is not an integer" -- "$bin" "${io[@]}" --qd 4,x
expect block-not-4k 2 'block 6000 must be a multiple of 4 KiB' -- "$bin" "${io[@]}" --blocks 64KiB,6000
expect block-bad-unit 2 "'12parsecs' is not a size" -- "$bin" "${io[@]}" --blocks 12parsecs
expect missing-dir 2 "directory '$tmp/nope'.*No such file" -- "$bin" io-bench --dir "$tmp/nope" --no-fio
expect dir-is-file 2 'is not a directory' -- "$bin" io-bench --dir "$tmp/r.json" --no-fio
expect size-too-small 2 '--size' -- "$bin" "${io[@]}" --size 100KiB
expect repeats-zero 2 '--repeats: 0 is out of range' -- "$bin" "${io[@]}" --repeats 0
expect unknown-option 2 "unknown option '--frobnicate'" -- "$bin" "${io[@]}" --frobnicate
expect too-much-buffer 2 'exceeds 256 MiB' -- "$bin" "${io[@]}" --blocks 16MiB --qd 32
expect bad-set-key 2 'nosuchkey' -- "$bin" "${io[@]}" --set spill.nosuchkey=1
expect json-unwritable 1 "cannot write '$tmp/nope/r.json'" -- "$bin" "${io[@]}" --blocks 64KiB --qd 1 --engines pread --json "$tmp/nope/r.json"

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
