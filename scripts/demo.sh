#!/usr/bin/env bash
# The main job: build ckptfs, mount it at /ckpt with the embedded defaults
# (cache /var/tmp/ckptfs), and run a demo checkpoint through it.
#
# An application writes checkpoint sets as plain files under /ckpt and
# commits them; the daemon is killed with SIGKILL in the middle of a set
# and mounted again, showing that a half-written checkpoint is never
# offered; a flipped byte is caught by verify; retention keeps the newest
# sets. Later capabilities extend it through every lower tier.
#
#   CKPTFS_DEMO_MOUNT=/ckpt   where to mount (default /ckpt)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
run() { printf '$ %s\n' "$*" >&2; "$@"; }

say "building ckptfs (release)"
cargo build --release --locked -p ckptfs
export PATH=$PWD/target/release:$PATH

mnt=${CKPTFS_DEMO_MOUNT:-/ckpt}
job=demo-$$
mkdir -p "$mnt"
# A mount left by an earlier run (live or with a dead daemon) goes first.
if grep -q " $mnt fuse.ckptfs " /proc/mounts; then
    ckptfs umount --force "$mnt" >/dev/null || umount -l "$mnt"
fi
cleanup() {
    if grep -q " $mnt fuse.ckptfs " /proc/mounts; then
        ckptfs umount --force "$mnt" >/dev/null 2>&1 || umount -l "$mnt" || true
    fi
}
trap cleanup EXIT

say "the configuration in force (no file needed: built-in defaults)"
run ckptfs config

say "mount ckptfs at $mnt (returns once the mount is live)"
run ckptfs mount "$mnt"
run ckptfs status "$mnt"

say "an application writes three checkpoints as plain files (4 ranks x 16 MiB)"
for step in 1 2 3; do
    set_dir=$mnt/$job/step-000$step
    mkdir -p "$set_dir"
    for rank in 0 1 2 3; do
        head -c $((16 << 20)) /dev/urandom > "$set_dir/rank-$rank.bin" &
    done
    wait
    echo "state before commit: $(getfattr --absolute-names --only-values -n user.ckptfs.state "$set_dir")" >&2
    if ((step == 2)); then
        # The same commit, through an extended attribute (no ckptfs tool needed).
        run setfattr -n user.ckptfs.commit -v 1 "$set_dir"
    else
        run ckptfs commit "$set_dir"
    fi
    echo "state after commit:  $(getfattr --absolute-names --only-values -n user.ckptfs.state "$set_dir")" >&2
done
run ckptfs ls "$job"

say "a complete checkpoint is read-only"
if echo overwrite >> "$mnt/$job/step-0001/rank-0.bin"; then
    echo "unexpected: a complete set accepted a write" >&2
    exit 1
fi

say "the node's daemon is killed (SIGKILL) while step-0004 is being written"
mkdir -p "$mnt/$job/step-0004"
dd if=/dev/urandom of="$mnt/$job/step-0004/rank-0.bin" bs=1M count=4096 status=none 2>/dev/null &
writer=$!
sleep 1
pid=$(ckptfs status "$mnt" --json | sed -n 's/^  "pid": \([0-9]*\),$/\1/p')
run kill -9 "$pid"
wait "$writer" 2>/dev/null && echo "writer finished" >&2 || echo "the writer got an error instead of hanging: $?" >&2
ls "$mnt" 2>&1 | sed 's/^/    /' >&2 || true

say "mount again: the stale mount is recovered, the killed set is never offered"
run ckptfs mount "$mnt"
run ckptfs ls "$job"
echo "latest complete set:" >&2
run ckptfs latest "$job"

say "verify re-reads every chunk of the latest set"
run ckptfs verify "$job"

say "a flipped byte in step-0002 is caught (exit status 4)"
cache=$(dirname "$(dirname "$(ckptfs latest "$job" --path)")")
f=$cache/$job/step-0002/rank-1.bin
printf '\xff' | dd of="$f" bs=1 seek=3000000 conv=notrunc status=none
set +e
ckptfs verify "$job" step-0002
echo "exit status: $?" >&2
set -e

say "retention: keep the newest 3 complete sets, remove the abandoned one"
run ckptfs prune "$job"
run ckptfs ls "$job"

say "status of the mount"
run ckptfs status "$mnt"

say "unmount, and clean up the demo job"
run ckptfs umount "$mnt"
for s in $(ckptfs ls "$job" | awk 'NR > 1 && /^[^ ]/ {print $1}'); do
    ckptfs rm "$job" "$s" >/dev/null
done
echo "demo finished: every step above ran against a real mount and the real store in $cache" >&2
