#!/usr/bin/env bash
# Fuzzes the parsers that take untrusted bytes (API bodies and queries,
# function code archives, image archives, layers and their JSON, --policy
# profiles) with libFuzzer, through cargo-fuzz on the nightly toolchain:
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default 300); all targets in fuzz/fuzz_targets unless
# named. Each starts from fuzz/corpus/<target>/ (not from the crashes, which
# would stop it at once); the inputs it finds go to fuzz/work/<target>/ (ignored by git), and every
# crash to fuzz/crashes/<target>/, which `cargo test -p alcove-fuzz` replays
# (CI's short run) until it is fixed. Exits 1 if any target crashed.
#
#   ALCOVE_FUZZ_MERGE=1   merge what was found, minimised, into fuzz/corpus
#   ALCOVE_FUZZ_ARGS      more libFuzzer flags (e.g. "-jobs=2 -workers=2")
#
# It runs as root (layers keep their owners, as in a real import) and
# writes only beneath a scratch directory on /dev/shm (ALCOVE_FUZZ_TMP).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
seconds=${1:-300}
case "$seconds" in
    ''|*[!0-9]*) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
shift || true
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 1
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
cargo +nightly fuzz build

crashed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/work/$t" "fuzz/crashes/$t"
    case "$t" in
        code_tar|image_archive|image_layer) dict=fuzz/tar.dict ;;
        *) dict=fuzz/json.dict ;;
    esac
    before=$(find "fuzz/crashes/$t" -type f | wc -l)
    echo "== $t: ${seconds}s"
    # shellcheck disable=SC2086 # ALCOVE_FUZZ_ARGS is a list of flags
    if ! cargo +nightly fuzz run "$t" "fuzz/work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 -dict="$dict" \
        -artifact_prefix="$root/fuzz/crashes/$t/" ${ALCOVE_FUZZ_ARGS:-}; then
        crashed+=("$t")
    fi
    after=$(find "fuzz/crashes/$t" -type f | wc -l)
    if [ "$after" -gt "$before" ]; then
        crashed+=("$t")
    fi
    if [ "${ALCOVE_FUZZ_MERGE:-}" = 1 ]; then
        cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/work/$t" -- -merge=1
    fi
done

if [ ${#crashed[@]} -gt 0 ]; then
    echo "crashes found in: $(printf '%s\n' "${crashed[@]}" | sort -u | tr '\n' ' ')"
    echo "reproduce one:    cargo +nightly fuzz run TARGET fuzz/crashes/TARGET/FILE"
    echo "as a test:        cargo test -p alcove-fuzz --test replay saved_inputs_crashes"
    exit 1
fi
echo "no crashes in ${#targets[@]} targets, ${seconds}s each"
