#!/usr/bin/env bash
# The full test suite: formatting, lints, every unit and integration test
# (real processes, SIGKILL fault injection), and a short fuzzing run of every
# parser. `.ci/run` calls exactly this. Heavy benchmarks are not run here
# (see bench/RESULTS.md for how to run them).
#
#   FUZZ_SECONDS=60   seconds of fuzzing per target (0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh

step() { printf '\n==> %s\n' "$*" >&2; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build (release)"
cargo build --workspace --release --locked

step "tests"
test_log=$(mktemp /tmp/ckptfs-tests.XXXXXX)
trap 'rm -f "$test_log"' EXIT
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$test_log"
test_status=${PIPESTATUS[0]}
# One closing line for the whole suite, summed over every test binary.
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) {
        if ($(i+1) ~ /^passed;?$/) p += $i; if ($(i+1) ~ /^failed;?$/) f += $i } }
    END { print p + 0, f + 0 }' "$test_log")
if [[ $test_status -ne 0 ]]; then
    echo "tests: $passed passed, $failed failed"
    exit "$test_status"
fi

fuzz_seconds=${FUZZ_SECONDS:-60}
if [[ $fuzz_seconds -gt 0 ]]; then
    if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        step "fuzzing every parser for ${fuzz_seconds}s each"
        bash fuzz/run.sh "$fuzz_seconds"
    else
        step "fuzzing skipped: cargo fuzz needs a nightly toolchain (rustup toolchain install nightly)"
    fi
fi
step "all tests passed"
echo "tests: $passed passed, $failed failed"
