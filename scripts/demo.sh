#!/usr/bin/env bash
# The main job: build ckptfs and run a demo checkpoint through the store
# with the embedded defaults (cache /var/tmp/ckptfs, job "demo").
#
# It writes checkpoint sets, commits one written by hand, kills a writer
# with SIGKILL halfway through a set to show that a half-written checkpoint
# is never offered, flips a byte to show verify catching it, and prunes.
# Later capabilities extend it through the /ckpt mount and every tier.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
run() { printf '$ %s\n' "$*" >&2; "$@"; }

say "building ckptfs (release)"
cargo build --release --locked -p ckptfs
ckptfs=$PWD/target/release/ckptfs
export PATH=$PWD/target/release:$PATH

job=demo-$$
work=$(mktemp -d /var/tmp/ckptfs-demo-input.XXXXXX)
trap 'rm -rf "$work"' EXIT

say "the configuration in force (no file needed: built-in defaults)"
run ckptfs config

say "an application writes three checkpoints (4 ranks x 8 MiB each)"
for step in 1 2 3; do
    mkdir -p "$work/step-$step"
    for rank in 0 1 2 3; do
        head -c $((8 << 20)) /dev/urandom > "$work/step-$step/rank-$rank.bin"
    done
    run ckptfs put "$job" "$work/step-$step" --set "step-000$step"
done

say "a set written into the cache by plain file writes, then committed"
cache=$(dirname "$(dirname "$(ckptfs latest "$job" --path)")")
mkdir -p "$cache/$job/step-0004"
cp "$work/step-3/"* "$cache/$job/step-0004/"
run ckptfs ls "$job"
run ckptfs commit "$cache/$job/step-0004"

say "a writer killed with SIGKILL halfway through step-0005"
head -c $((1 << 30)) /dev/urandom > "$work/big.bin"
"$ckptfs" put "$job" "$work/big.bin" --set step-0005 &
writer=$!
# Kill it once a quarter of the file is on disk: mid-write, for real.
partial=$cache/$job/step-0005/big.bin
for _ in $(seq 1 500); do
    size=$(stat -c %s "$partial" 2>/dev/null || echo 0)
    ((size > (256 << 20))) && break
    sleep 0.01
done
kill -9 "$writer" 2>/dev/null || true
wait "$writer" 2>/dev/null || true
echo "killed the writer with $(stat -c %s "$partial" 2>/dev/null || echo 0) of $((1 << 30)) bytes written" >&2
run ckptfs ls "$job"
echo "latest complete set (the killed one is never offered):" >&2
run ckptfs latest "$job"

say "verify re-reads every chunk"
run ckptfs verify "$job"

say "a flipped byte in step-0002 is caught (exit status 4)"
f=$cache/$job/step-0002/step-2/rank-1.bin
printf '\xff' | dd of="$f" bs=1 seek=3000000 conv=notrunc status=none
set +e
ckptfs verify "$job" step-0002
echo "exit status: $?" >&2
set -e

say "retention: keep the newest 3 complete sets, remove the abandoned one"
run ckptfs prune "$job"
run ckptfs ls "$job"

say "status"
run ckptfs status

say "cleaning up the demo job"
for s in $(ckptfs ls "$job" | awk 'NR > 1 && /^[^ ]/ {print $1}'); do
    ckptfs rm "$job" "$s" >/dev/null
done
echo "demo finished: every step above ran against the real store in $cache" >&2
