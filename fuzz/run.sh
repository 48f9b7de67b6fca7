#!/usr/bin/env bash
# Fuzz every cargo-fuzz target for a fixed time each; exit non-zero if any
# of them crashes, hangs or leaks. CI calls `bash fuzz/run.sh 60`.
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET]    (default 60)
#
# Environment:
#   FUZZ_TOOLCHAIN  rustup toolchain for cargo-fuzz (default: nightly; the
#                   sanitizer flags it passes need one)
#   FUZZ_CORPUS     where the working corpus lives (default: fuzz/corpus,
#                   which is gitignored); seeds are copied in before each run
set -euo pipefail

secs="${1:-60}"
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]  (got '$secs')" >&2
    exit 2
fi

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$fuzz_dir")"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
corpus_root="${FUZZ_CORPUS:-$fuzz_dir/corpus}"

cargo_fuzz() {
    cargo "+$toolchain" fuzz "$@"
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# A CARGO_TARGET_DIR inherited from the caller would put sanitizer builds
# next to ordinary ones and fight over the same lock: the fuzz crate keeps
# its own target dir.
unset CARGO_TARGET_DIR

cd "$root"
mapfile -t targets < <(cargo_fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
    echo "fuzz/run.sh: no fuzz targets found" >&2
    exit 1
fi

failed=()
for t in "${targets[@]}"; do
    corpus="$corpus_root/$t"
    mkdir -p "$corpus"
    if [ -d "$fuzz_dir/seeds/$t" ]; then
        cp -rf "$fuzz_dir/seeds/$t"/. "$corpus"/
    fi
    args=(-max_total_time="$secs" -timeout=10 -print_final_stats=1)
    if [ -f "$fuzz_dir/$t.dict" ]; then
        args+=(-dict="$fuzz_dir/$t.dict")
    fi
    echo "fuzz/run.sh: $t for ${secs}s (corpus $corpus)" >&2
    # libFuzzer exits non-zero on a crash, timeout, leak or OOM and leaves
    # the input in fuzz/artifacts/$t/; keep going so one run reports every
    # target that fails.
    if ! cargo_fuzz run "$t" "$corpus" -- "${args[@]}"; then
        failed+=("$t")
        echo "fuzz/run.sh: $t FAILED; reproducer(s) in $fuzz_dir/artifacts/$t/" >&2
    fi
done

# dr_request keeps a scratch store per fuzzer process, and libFuzzer exits
# without unwinding: each run clears the dead ones' but leaves its own.
for d in /dev/shm/ckptfs-fuzz-dr-* /tmp/ckptfs-fuzz-dr-*; do
    [ -d "$d" ] && [ ! -d "/proc/${d##*-}" ] && rm -rf "$d"
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz/run.sh: failing targets: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz/run.sh: all ${#targets[@]} target(s) ran ${secs}s without a failure" >&2
