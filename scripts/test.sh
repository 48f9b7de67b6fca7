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

step "cargo clippy with the rdma feature"
cargo clippy --workspace --all-targets --locked --features ckptfs/rdma,ckpt-bench/rdma -- -D warnings

step "build (release)"
cargo build --workspace --release --locked

step "tests"
test_log=$(mktemp /tmp/ckptfs-tests.XXXXXX)
trap 'rm -f "$test_log"' EXIT
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$test_log"
test_status=${PIPESTATUS[0]}

# This kernel has no RDMA stack: the RDMA tests run, built here, inside a
# throwaway QEMU guest with a soft-RoCE device (scripts/rdma-guest.sh).
# On the host above they only said they were skipped.
step "RDMA tests in a soft-RoCE guest"
rdma_build=$(cargo test -p ckptfs --features rdma --test rdma --test rdma_verbs --no-run --locked 2>&1) || {
    echo "$rdma_build"
    exit 1
}
mapfile -t rdma_bins < <(sed -n 's/.*Executable tests\/rdma[a-z_]*\.rs (\(.*\))$/\1/p' <<<"$rdma_build")
if [[ ${#rdma_bins[@]} -ne 2 ]]; then
    echo "$rdma_build"
    echo "test.sh: cannot find the two RDMA test binaries in cargo's output" >&2
    exit 1
fi
echo "Running the RDMA tests in the guest: ${rdma_bins[*]}" >>"$test_log"
# One boot for both; each binary is its own process (see tests/rdma_verbs.rs).
bash scripts/rdma-guest.sh run -- bash -c 'rc=0; for b; do "$b" --test-threads=1 || rc=1; done; exit $rc' \
    rdma-tests "${rdma_bins[@]}" 2>&1 | tee -a "$test_log"
rdma_status=${PIPESTATUS[0]}
if [[ $test_status -eq 0 && $rdma_status -ne 0 ]]; then
    test_status=$rdma_status
fi
# One closing line for the whole suite, summed over every test binary.
# The host's runs of tests/rdma*.rs only skipped: their lines are not counted.
read -r passed failed < <(awk '/^ *Running / { host_rdma = ($0 ~ /Running tests\/rdma(_verbs)?\.rs/) }
    /^ *Doc-tests / { host_rdma = 0 }
    /^test result:/ && !host_rdma { for (i = 1; i <= NF; i++) {
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
