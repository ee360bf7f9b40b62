#!/usr/bin/env bash
# Fuzzes spry's file readers with cargo-fuzz (libFuzzer; needs a nightly toolchain).
#
#   scripts/fuzz.sh smoke [TARGET...]   every target ~3 s from the seeds, plus its regressions (CI);
#                                       skips (exit 0) without a nightly toolchain
#   scripts/fuzz.sh full  [TARGET...]   1M executions of every target, growing fuzz/corpus/
#   scripts/fuzz.sh list                the targets
#
# Targets are the files of fuzz/fuzz_targets/ (one per reader; the checks are in
# fuzz/src/readers.rs, shared with the stable test tests/fuzz_corpus.rs). Inputs come from
# fuzz/seeds/TARGET (written by `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`)
# and fuzz/corpus/TARGET; a crash is saved under fuzz/artifacts/TARGET/ and fails the run.
# Builds use cargo-fuzz's defaults (release with debug assertions and overflow checks, ASan).
#
# Environment: SMOKE_SECONDS (default 3) per target in smoke mode; FUZZ_RUNS (default 1000000)
# in full mode.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"

mode=${1:-smoke}
shift || true

all_targets() {
    for f in fuzz_targets/*.rs; do
        basename "$f" .rs
    done
}

if [ "$mode" = list ]; then
    all_targets
    exit 0
fi
if [ "$mode" != smoke ] && [ "$mode" != full ]; then
    echo "usage: scripts/fuzz.sh smoke|full|list [TARGET...]" >&2
    exit 2
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
    if [ "$mode" = smoke ]; then
        echo "fuzz smoke: SKIPPED: no nightly toolchain (rustup toolchain install nightly)"
        exit 0
    fi
    echo "fuzz: cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(all_targets)
fi

common=(-rss_limit_mb=4096 -timeout=10 -print_final_stats=1)
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    if [ "$mode" = smoke ]; then
        # the regressions, each run once (files, not folders: libFuzzer runs them and stops)
        mapfile -t cases < <(find "regressions/$t" -type f 2>/dev/null | sort)
        if [ ${#cases[@]} -gt 0 ]; then
            echo "== $t: ${#cases[@]} regression case(s)"
            cargo +nightly fuzz run "$t" "${cases[@]}" -- "${common[@]}"
        fi
        # from the committed seeds only (a grown local corpus would make the start-up slow);
        # new inputs go to a scratch folder, so a smoke run leaves fuzz/corpus as it was
        scratch=$(mktemp -d)
        echo "== $t: ${SMOKE_SECONDS:-3} s"
        cargo +nightly fuzz run "$t" "$scratch" "seeds/$t" -- \
            -max_total_time="${SMOKE_SECONDS:-3}" "${common[@]}"
        rm -rf "$scratch"
    else
        echo "== $t: ${FUZZ_RUNS:-1000000} runs"
        start=$(date +%s)
        cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
            -runs="${FUZZ_RUNS:-1000000}" "${common[@]}"
        echo "== $t: done in $(($(date +%s) - start)) s"
    fi
done
