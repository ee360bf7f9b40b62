#!/usr/bin/env bash
# Runs spry's `bench` example and the JAX anchor (scripts/jax_anchor/, a copy of the anchor the
# issue measures against) back to back on the same model geometry, then prints the ratios.
#
# Usage: scripts/bench_vs_jax.sh [--python PY] [--reps N] [--memory]
#
#   --python PY   a Python with jax installed (default: a venv in target/jaxenv, created with
#                 `pip install jax jaxlib numpy threadpoolctl` on first use, ~3 minutes)
#   --reps N      timed repetitions of each figure (default 7)
#   --memory      also run the anchor's memory sweep of jvp1 at T = 512 (~2 minutes)
#
# Both sides: MiniLM-L6 geometry, LoRA r=8 alpha=16 on query/value, 2-class head on the pooled
# first token, batch 8, sequence 128, f32, all cores. Speed is compared as ratios of medians
# measured in this one run; the machine's noise (10-25%) applies to both sides alike.
set -euo pipefail
cd "$(dirname "$0")/.."

python=""
reps=7
memory=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) python="$2"; shift 2 ;;
        --reps) reps="$2"; shift 2 ;;
        --memory) memory=1; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

out="target/bench_vs_jax"
mkdir -p "$out"
if [[ -z "$python" ]]; then
    venv="target/jaxenv"
    if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import jax" 2>/dev/null; then
        echo "installing jax into $venv ..." >&2
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet jax jaxlib numpy threadpoolctl
    fi
    python="$venv/bin/python"
fi

echo "== spry (cargo run --release --example bench -- --reps $reps)" >&2
cargo run --quiet --release --example bench -- --reps "$reps" | tee "$out/spry.txt" >&2

echo "== JAX anchor" >&2
"$python" scripts/jax_anchor/jax_transformer_jvp.py --skip-mem --modes fwd,jvp1,jvp16 \
    --reps "$reps" --json "$out/jax.json" >&2
if [[ $memory == 1 ]]; then
    "$python" scripts/jax_anchor/jax_transformer_jvp.py --skip-timing --mem-seqs 512 \
        --mem-modes jvp1 --json "$out/jax_mem.json" >&2
fi

python3 - "$out" <<'EOF'
import json, os, sys
out = sys.argv[1]
spry = json.loads(open(os.path.join(out, "spry.txt")).read().strip().splitlines()[-1])
jax = json.load(open(os.path.join(out, "jax.json")))
t = jax["timing"]
jf, j1, j16 = t["fwd"]["median"] * 1e3, t["jvp1"]["median"] * 1e3, t["jvp16"]["median"] * 1e3
gflop = jax["info"]["fwd_matmul_gflop"]
rows = [
    ("forward ms", spry["fwd_ms"], jf, spry["fwd_ms"] / jf),
    ("forward GFLOP/s", spry["fwd_gflops"], gflop / jf * 1e3, spry["fwd_gflops"] / (gflop / jf * 1e3)),
    ("JVP K=1 ms", spry["jvp1_ms"], j1, spry["jvp1_ms"] / j1),
    ("JVP K=1 / own forward", spry["jvp1_over_fwd"], j1 / jf, None),
    ("JVP K=16 per direction / own forward", spry["jvp16_per_dir_over_fwd"], j16 / 16 / jf, None),
]
mem_path = os.path.join(out, "jax_mem.json")
if os.path.exists(mem_path) and "step_peak_mib_t512" in spry:
    for r in json.load(open(mem_path))["memory"]:
        if r.get("mode") == "jvp1" and r.get("seq") == 512 and "peak_delta_mib" in r:
            rows.append(("working MiB at T=512 (step / jvp1)", spry["step_peak_mib_t512"],
                         r["peak_delta_mib"], spry["step_peak_mib_t512"] / r["peak_delta_mib"]))
print(f"{'':40} {'spry':>10} {'JAX':>10} {'spry/JAX':>9}")
for name, a, b, r in rows:
    print(f"{name:40} {a:>10.2f} {b:>10.2f} {'' if r is None else f'{r:.2f}':>9}")
summary = {"spry": spry, "jax_fwd_ms": jf, "jax_jvp1_ms": j1, "jax_jvp16_ms": j16,
           "jvp1_over_jax_jvp1": spry["jvp1_ms"] / j1, "fwd_over_jax_fwd": spry["fwd_ms"] / jf}
print(json.dumps(summary))
EOF
