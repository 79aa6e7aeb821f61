#!/usr/bin/env python3
"""eval_report.py - tables and gnuplot PNGs from one or more `spindle eval --json` files.

`spindle eval` prints the same tables and draws the same plots itself at the end of a run; this
script does it again from the JSON, for runs split over several processes or stopped early (their
JSON is rewritten after every finished fidelity run / retrieval cell, with "complete": false).

usage: scripts/eval_report.py [--out DIR] FILE.json...
  stdout: fidelity frontier (mean over the runs of every file of the metric interpolated to each
          true-byte target), per-run best policy, retrieval accuracy per policy;
  --out:  quality_{kl,top1,ppl}.png and retrieval.png (gnuplot, Debian gnuplot-nox) in DIR.
"""
import json
import math
import os
import subprocess
import sys


def load(paths):
    runs, cells, ret_cfg, info = [], [], None, []
    for p in paths:
        d = json.load(open(p))
        info.append((p, d.get("complete", True), d.get("commit", "?"), d.get("wall_s")))
        runs += d.get("fidelity", [])
        r = d.get("retrieval", {})
        if r.get("cells"):
            cells += r["cells"]
            ret_cfg = r
    return runs, cells, ret_cfg, info


def mean_at(runs, policy, target, key):
    vals = []
    for r in runs:
        for p in r["policies"]:
            if p["policy"] != policy:
                continue
            for a in p["at_targets"]:
                if abs(a["target"] - target) < 1e-9:
                    v = a[key]
                    if v is None:
                        return None
                    vals.append(v / r["full"]["ppl"] if key == "ppl" else v)
    return sum(vals) / len(vals) if vals else None


def main():
    args = sys.argv[1:]
    out = None
    if len(args) >= 2 and args[0] == "--out":
        out, args = args[1], args[2:]
    if not args:
        print(__doc__)
        return 2
    runs, cells, ret_cfg, info = load(args)
    for p, complete, commit, wall in info:
        print(f"{p}: commit {commit[:12]}, {'complete' if complete else 'PARTIAL (stopped early)'}, "
              f"wall {wall if wall is None else round(wall)} s")
    policies, targets = [], []
    for r in runs:
        for p in r["policies"]:
            if p["policy"] not in policies:
                policies.append(p["policy"])
            for a in p["at_targets"]:
                if a["target"] not in targets:
                    targets.append(a["target"])
    targets.sort()
    if runs:
        names = ", ".join(f"{r['text']} N={r['n_prompt']}" for r in runs)
        print(f"\nFidelity at equal TRUE byte ratio, mean over {len(runs)} runs ({names}), "
              f"{runs[0]['n_tokens']} teacher-forced tokens each:")
        print("KL(full||policy) nats / top-1 agreement / ppl relative to full; '-' = outside the measured range\n")
        print("| policy | " + " | ".join(f"{t:.2f}" for t in targets) + " |")
        print("|---|" + "---|" * len(targets))
        for pol in policies:
            row = []
            for t in targets:
                kl, t1, pp = (mean_at(runs, pol, t, k) for k in ("kl", "top1", "ppl"))
                row.append("-" if kl is None else f"{kl:.4f} / {t1:.3f} / {pp:.3f}")
            print(f"| {pol} | " + " | ".join(row) + " |")
        print("\nPer run, lowest interpolated KL at each target (spindle's rank in brackets):")
        for r in runs:
            line = f"  {r['text']:3} N={r['n_prompt']:<5} full ppl {r['full']['ppl']:.3f}:"
            for t in targets:
                ranked = []
                for p in r["policies"]:
                    for a in p["at_targets"]:
                        if abs(a["target"] - t) < 1e-9 and a["kl"] is not None:
                            ranked.append((a["kl"], p["policy"]))
                ranked.sort()
                rank = next((i + 1 for i, (_, n) in enumerate(ranked) if n == "spindle"), None)
                line += f"  {t:.2f}: {ranked[0][1] if ranked else '-'} (spindle {rank}/{len(ranked)})"
            print(line)
    if cells:
        print(f"\nRetrieval: passkey exact match over {len(cells)} prompts")
        print("| policy | target | accuracy | prompts | mean true ratio |\n|---|---|---|---|---|")
        keys = []
        for c in cells:
            for r in c["results"]:
                if (r["policy"], r["target"]) not in keys:
                    keys.append((r["policy"], r["target"]))
        for pol, t in keys:
            rs = [r for c in cells for r in c["results"] if r["policy"] == pol and r["target"] == t]
            acc = sum(r["correct"] for r in rs) / len(rs)
            ratio = sum(r["true_ratio"] for r in rs) / len(rs)
            print(f"| {pol} | {t:.2f} | {acc:.3f} | {len(rs)} | {ratio:.4f} |")
    if out:
        plot(out, runs, cells, ret_cfg, policies)
    return 0


def safe(name):
    return "".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in name)


def plot(out, runs, cells, ret_cfg, policies):
    os.makedirs(out, exist_ok=True)
    gp = ["set key outside right", "set grid"]
    for r in runs:
        for p in r["policies"]:
            pts = sorted(p["points"], key=lambda q: q["true_ratio"])
            with open(os.path.join(out, f"fid_{r['text']}_{r['n_prompt']}_{safe(p['policy'])}.dat"), "w") as f:
                f.write("# true_ratio kl top1 ppl/ppl_full knob\n")
                last = None
                for q in pts:
                    if q["true_ratio"] == last:
                        continue
                    last = q["true_ratio"]
                    f.write(f"{q['true_ratio']} {q['kl']} {q['top1']} {q['ppl'] / r['full']['ppl']} {q['knob']}\n")
    ylab = {"kl": "mean KL(full || policy), nats", "top1": "top-1 agreement with full",
            "ppl": "perplexity / full perplexity"}
    if runs:
        cols = min(3, len(runs))
        rows = (len(runs) + cols - 1) // cols
        for m, metric in enumerate(("kl", "top1", "ppl")):
            gp += [f"set terminal pngcairo noenhanced size {560 * cols},{420 * rows + 40} font ',10'",
                   f"set output 'quality_{metric}.png'",
                   f"set multiplot layout {rows},{cols} title 'spindle eval: {metric} vs TRUE byte ratio (measured points)'",
                   "set xlabel 'true byte ratio (bytes held / fp16 GQA cache)'", f"set ylabel '{ylab[metric]}'",
                   "set logscale y" if metric == "kl" else "unset logscale y", "set xrange [0:*]"]
            for r in runs:
                gp.append(f"set title '{r['text']}, N = {r['n_prompt']}, {r['n_tokens']} tokens'")
                gp.append("plot " + ", ".join(
                    f"'fid_{r['text']}_{r['n_prompt']}_{safe(p['policy'])}.dat' using 1:{m + 2} with linespoints lw 2 "
                    f"title '{p['policy']}'" for p in r["policies"]))
            gp += ["unset multiplot", "unset logscale y"]
    if cells:
        lengths, depths = ret_cfg["lengths"], ret_cfg["depths"]
        keys = []
        for c in cells:
            for r in c["results"]:
                if (r["policy"], r["target"]) not in keys:
                    keys.append((r["policy"], r["target"]))
        cols = min(4, len(keys))
        rows = (len(keys) + cols - 1) // cols
        seeds = sorted({c["seed"] for c in cells})
        gp += [f"set terminal pngcairo noenhanced size {420 * cols},{360 * rows + 40} font ',10'",
               "set output 'retrieval.png'",
               f"set multiplot layout {rows},{cols} title 'spindle eval: passkey accuracy over {len(cells)} prompts "
               f"(grey: no prompt measured)'",
               "unset grid", "set cbrange [0:1]", "set palette defined (0 '#b2182b', 0.5 '#f7f7f7', 1 '#2166ac')",
               "set xlabel 'context length'", "set ylabel 'depth %'", "unset key",
               "set xtics (" + ", ".join(f"'{n}' {i}" for i, n in enumerate(lengths)) + ")",
               "set ytics (" + ", ".join(f"'{round(100 * d)}' {i}" for i, d in enumerate(depths)) + ")",
               f"set xrange [-0.5:{len(lengths) - 0.5}]", f"set yrange [-0.5:{len(depths) - 0.5}]",
               "set object 1 rectangle from graph 0,0 to graph 1,1 behind fillcolor rgb '#bbbbbb' fillstyle solid"]
        for pol, t in keys:
            fn = f"ret_{safe(pol)}_{round(100 * t)}.dat"
            tot = ok = 0
            with open(os.path.join(out, fn), "w") as f:
                f.write("# length_index depth_index accuracy prompts\n")
                for li, n in enumerate(lengths):
                    for di, dep in enumerate(depths):
                        rs = [r for c in cells if c["length"] == n and abs(c["depth"] - dep) < 1e-9
                              for r in c["results"] if r["policy"] == pol and r["target"] == t]
                        if rs:
                            a = sum(r["correct"] for r in rs)
                            ok += a
                            tot += len(rs)
                            f.write(f"{li} {di} {a / len(rs):.4f} {len(rs)}\n")
                    f.write("\n")
            gp.append(f"set title '{pol} at {t:.2f} true bytes (acc {ok / max(tot, 1):.2f}, {tot} prompts)'")
            gp.append(f"plot '{fn}' using 1:2:(0.5):(0.5):3 with boxxy fc palette fs solid, "
                      f"'' using 1:2:(sprintf('%.2f (%d)',$3,$4)) with labels")
        gp.append("unset multiplot")
    with open(os.path.join(out, "eval_report.gp"), "w") as f:
        f.write("# generated by scripts/eval_report.py; run: gnuplot eval_report.gp (in this directory)\n")
        f.write("\n".join(gp) + "\n")
    subprocess.run(["gnuplot", "eval_report.gp"], cwd=out, check=True)


if __name__ == "__main__":
    sys.exit(main())
