#!/usr/bin/env python3
"""Markdown table of `federated` example runs grouped by method, with the mean and spread over seeds
(and of `finetune_lm` runs: held-out NLL before, after and at the best evaluated round).

    python3 scripts/compare_runs.py runs/issue11/spry-s0 runs/issue11/spry-s1 runs/issue11/head-only-s0 ...

Each run folder needs `summary.json` (written at the end of a run). A run's group is its folder
name without a trailing `-s<seed>`.
"""
import csv
import json
import math
import re
import statistics
import sys
from pathlib import Path


def main(dirs):
    lm = [d for d in dirs if "nll_before" in json.loads((Path(d) / "summary.json").read_text())]
    if lm:
        language_model(lm)
    dirs = [d for d in dirs if d not in lm]
    if dirs:
        classification(dirs)


def language_model(dirs):
    """`finetune_lm` runs: the held-out NLL before, at the end and at its best evaluated round."""
    print("| run | split | rounds | wall s | NLL before | NLL after | change | best NLL (round, s) |")
    print("|---|---|---|---|---|---|---|---|")
    for d in map(Path, dirs):
        s = json.loads((d / "summary.json").read_text())
        with open(d / "metrics.csv") as f:
            rows = [r for r in csv.DictReader(f) if r["test_nll"]]
        rows.append({"test_nll": s["nll_after"], "round": s["rounds"], "wall_s": s["wall_s"]})
        best = min(rows, key=lambda r: float(r["test_nll"]))
        print(f"| {d.name} | {s.get('eval_split', 'test')} | {s['rounds']} | {s['wall_s']:.0f} | "
              f"{s['nll_before']:.4f} | {s['nll_after']:.4f} | "
              f"{s['nll_after'] - s['nll_before']:+.4f} | {float(best['test_nll']):.4f} "
              f"({best['round']}, {float(best['wall_s']):.0f}) |")
    print()


def classification(dirs):
    groups = {}
    print("| run | rounds | wall s | final test acc. | best test acc. | final test loss |")
    print("|---|---|---|---|---|---|")
    for d in map(Path, dirs):
        s = json.loads((d / "summary.json").read_text())
        acc, best = 100 * s["final_test_accuracy"], 100 * s["best_test_accuracy"]
        print(f"| {d.name} | {s['rounds']} | {s['wall_s']:.0f} | {acc:.2f} | {best:.2f} | "
              f"{s['final_test_loss']:.4f} |")
        groups.setdefault(re.sub(r"-s\d+$", "", d.name), []).append((acc, best))
    print()
    print("| method | seeds | final test acc. mean (min–max) | best test acc. mean |")
    print("|---|---|---|---|")
    for name, v in groups.items():
        finals = [a for a, _ in v]
        print(f"| {name} | {len(v)} | {statistics.mean(finals):.2f} ({min(finals):.2f}–"
              f"{max(finals):.2f}) | {statistics.mean(b for _, b in v):.2f} |")
    diagnostics(dirs)


def diagnostics(dirs):
    """The per-round diagnostics of metrics.csv, summarised per run (runs without them skipped)."""
    rows = []
    for d in map(Path, dirs):
        with open(d / "metrics.csv") as f:
            m = list(csv.DictReader(f))
        probed = [r for r in m if r.get("probe_unit")]
        if not probed or not m[-1].get("adapter_norm"):
            continue
        mean = lambda key: statistics.mean(float(r[key]) for r in probed)
        moved = [r for r in m if float(r["adapter_update"] or 0) > 0]
        if not moved:
            continue
        rows.append((d.name, len(probed), mean("grad_norm"), mean("estimator_cosine"),
                     mean("update_cosine"), float(m[-1]["adapter_norm"]),
                     float(m[-1]["adapter_loss_change"]), float(m[-1]["adapter_logit_rms"] or "nan")))
    if not rows:
        return
    print()
    print("| run | probed rounds | mean ‖∇L‖ of the probed unit | mean estimator cosine | "
          "mean update cosine | ‖adapters‖ at the end | adapters' effect on the probe loss | "
          "logit RMS change |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        logit = "–" if math.isnan(r[7]) else f"{r[7]:.3f}"
        print(f"| {r[0]} | {r[1]} | {r[2]:.3g} | {r[3]:.3f} | {r[4]:.3f} | {r[5]:.3f} | "
              f"{r[6]:+.4f} | {logit} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
