#!/usr/bin/env python3
"""spindle bench beside llama.cpp's llama-bench on the same GGUF, repeats interleaved.

Each repeat runs `spindle bench -r 1` and then `llama-bench -r 1` over the same depths, so drift of a
shared machine hits both; the load average (`/proc/loadavg`) is recorded before each run. Figures are
mean +- sd over the repeats; ratio = spindle / llama.cpp. llama.cpp runs with flash attention off
(-fa 0) unless --fa 1 is given; both use the same thread count.

usage: scripts/oracle/bench_vs_llama.py -m NAME|PATH --depths 512,4096 [-r 2] [-t 2] [--pp 512] [--tg 64]
                                        [--fa 0|1] [--spindle build/spindle] [--llama-bench PATH]
                                        [--out bench/results/NAME.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
CACHE = os.environ.get("SPINDLE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "spindle")
MODELS = {"smollm2-135m": "SmolLM2-135M-Instruct.Q4_1.gguf",
          "qwen2.5-0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
          "qwen2.5-1.5b": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"}


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def run_spindle(exe, model, depths, threads, pp, tg, tmp):
    cmd = [exe, "bench", "-m", model, "--depths", depths, "-t", str(threads), "--pp", str(pp), "--tg", str(tg),
           "-r", "1", "--llama-bench", "none", "--json", tmp]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(tmp) as f:
        rows = json.load(f)["rows"]
    return {r["depth"]: (r["pp_tps"], r["tg_tps"]) for r in rows}


def run_llama(exe, model, depths, threads, pp, tg, fa):
    cmd = [exe, "-m", model, "-t", str(threads), "-p", str(pp), "-n", str(tg), "-d", depths, "-r", "1",
           "-fa", str(fa), "-o", "json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res = {}
    for o in json.loads(out):
        d = o["n_depth"]
        pp_v, tg_v = res.get(d, (None, None))
        if o["n_prompt"] == pp and o["n_gen"] == 0:
            pp_v = o["avg_ts"]
        elif o["n_prompt"] == 0 and o["n_gen"] == tg:
            tg_v = o["avg_ts"]
        res[d] = (pp_v, tg_v)
        build = o.get("build_commit", "?"), o.get("build_number", "?"), o.get("cpu_info", "?")
    return res, build


def ms(v):
    return (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--depths", required=True)
    ap.add_argument("-r", "--repeats", type=int, default=2)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=64)
    ap.add_argument("--fa", type=int, default=0)
    ap.add_argument("--spindle", default=os.path.join(ROOT, "build", "spindle"))
    ap.add_argument("--llama-bench", default=os.path.join(CACHE, "llama.cpp-build", "bin", "llama-bench"))
    ap.add_argument("--out")
    a = ap.parse_args()
    model = os.path.join(CACHE, "models", MODELS[a.model]) if a.model in MODELS else a.model
    name = a.model if a.model in MODELS else os.path.basename(model)
    depths = [int(x) for x in a.depths.split(",")]
    tmp = "/tmp/spindle-bench-%d.json" % os.getpid()
    sp = {d: ([], []) for d in depths}
    ll = {d: ([], []) for d in depths}
    loads, build = [], None
    t_start = time.time()
    for r in range(a.repeats):
        la = loadavg()
        res = run_spindle(a.spindle, model, a.depths, a.threads, a.pp, a.tg, tmp)
        lb = loadavg()
        lres, build = run_llama(a.llama_bench, model, a.depths, a.threads, a.pp, a.tg, a.fa)
        loads.append({"repeat": r + 1, "load_before_spindle": la, "load_before_llama": lb})
        for d in depths:
            sp[d][0].append(res[d][0]); sp[d][1].append(res[d][1])
            ll[d][0].append(lres[d][0]); ll[d][1].append(lres[d][1])
        print("repeat %d/%d done (load %s / %s)" % (r + 1, a.repeats, la, lb), file=sys.stderr)
    os.unlink(tmp)
    rows = []
    print("| model | threads | test | spindle t/s | llama.cpp t/s (FA %s) | ratio |" % ("on" if a.fa else "off"))
    print("|---|---|---|---|---|---|")
    for d in depths:
        row = {"depth": d}
        for k, key in ((0, "pp"), (1, "tg")):
            m0, s0 = ms(sp[d][k])
            m1, s1 = ms(ll[d][k])
            row.update({key + "_tps": round(m0, 3), key + "_sd": round(s0, 3), "llama_" + key + "_tps": round(m1, 3),
                        "llama_" + key + "_sd": round(s1, 3), key + "_ratio": round(m0 / m1, 4),
                        key + "_runs": [round(x, 3) for x in sp[d][k]],
                        "llama_" + key + "_runs": [round(x, 3) for x in ll[d][k]]})
            print("| %s | %d | %s%d @ d%d | %.2f ± %.2f | %.2f ± %.2f | %.3f |"
                  % (name, a.threads, key, a.pp if key == "pp" else a.tg, d, m0, s0, m1, s1, m0 / m1))
        rows.append(row)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    doc = {"bench": "scripts/oracle/bench_vs_llama.py (spindle bench and llama-bench, repeats interleaved)",
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t_start)), "commit": commit,
           "model": MODELS.get(a.model, model), "threads": a.threads, "pp": a.pp, "tg": a.tg,
           "repeats": a.repeats, "llama_bench": {"flash_attn": a.fa, "build": list(build) if build else None},
           "spindle": {"numerics": "ggml", "kv": "f16"},
           "machine_note": "shared 2-core VM; the load average before each run is recorded: figures taken under load",
           "load": loads, "rows": rows, "wall_s": round(time.time() - t_start, 1)}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        print("wrote %s" % a.out, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
