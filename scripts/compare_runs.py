#!/usr/bin/env python3
"""Markdown table of `federated` example runs grouped by method, with the mean and spread over seeds.

    python3 scripts/compare_runs.py runs/issue11/spry-s0 runs/issue11/spry-s1 runs/issue11/head-only-s0 ...

Each run folder needs `summary.json` (written at the end of a run). A run's group is its folder
name without a trailing `-s<seed>`.
"""
import json
import re
import statistics
import sys
from pathlib import Path


def main(dirs):
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


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
