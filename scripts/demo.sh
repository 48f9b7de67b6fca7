#!/usr/bin/env bash
# The main job: build ckptfs, mount it at /ckpt with the embedded defaults
# (cache /var/tmp/ckptfs), and run a demo checkpoint through every tier.
#
# An application writes checkpoint sets as plain files under /ckpt and
# commits them; they drain to a parallel-filesystem directory, to a
# local DR receiver (`ckptfs serve`) and to an S3 bucket (a SeaweedFS
# server on loopback). The daemon is killed with SIGKILL in
# the middle of a set and mounted again: the half-written checkpoint is
# never offered. The demo job is then wiped from the cache, as on a fresh
# node, and comes back from the tiers through /ckpt and `ckptfs restore`,
# verified and compared byte for byte. A flipped byte is caught by verify.
# Then a C heat solver checkpoints through libckpt into the same store (the
# daemon drains it), is killed with SIGKILL and restarts to a bit-identical
# result; and an unmodified process is dumped with ckptfs-dump (CRIU),
# killed, and brought back with ckptfs-restore, counting on.
#
#   CKPTFS_DEMO_MOUNT=/ckpt   where to mount (default /ckpt)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh

say() { printf '\n\033[1m==> %s\033[0m\n' "$*" >&2; }
run() { printf '$ %s\n' "$*" >&2; "$@"; }

say "building ckptfs and libckpt (release)"
cargo build --release --locked -p ckptfs -p ckpt-capi
export PATH=$PWD/target/release:$PATH

mnt=${CKPTFS_DEMO_MOUNT:-/ckpt}
job=demo-$$
mkdir -p "$mnt"
# The lower tiers of the demo: a directory standing for the parallel
# filesystem, and a DR receiver on this machine with a fresh shared key.
tiers=$(mktemp -d /var/tmp/ckptfs-demo-tiers.XXXXXX)
mkdir -p "$tiers/pfs" "$tiers/dr" "$tiers/s3"
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tiers/dr.key")
port=$((17000 + $$ % 1000))
# The S3 server's ports (and each port + 10000, its gRPC twin).
s3port=$((18000 + $$ % 1000))
export AWS_ACCESS_KEY_ID=demo-$$ AWS_SECRET_ACCESS_KEY=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
tier_flags=(--pfs "$tiers/pfs" --dr "127.0.0.1:$port" --dr-key "$tiers/dr.key"
            --s3 s3://ckpt-demo/cluster1 --s3-endpoint "http://127.0.0.1:$s3port" --drain-jitter 0s)
# A mount left by an earlier run (live or with a dead daemon) goes first.
if grep -q " $mnt fuse.ckptfs " /proc/mounts; then
    ckptfs umount --force "$mnt" >/dev/null || umount -l "$mnt"
fi
serve_pid=
weed_pid=
cleanup() {
    # The demo's own status, not that of the last clean-up step.
    local rc=$?
    if grep -q " $mnt fuse.ckptfs " /proc/mounts; then
        ckptfs umount --force "$mnt" >/dev/null 2>&1 || umount -l "$mnt" || true
    fi
    if [[ -n $serve_pid ]]; then
        kill "$serve_pid" 2>/dev/null || true
        wait "$serve_pid" 2>/dev/null || true
    fi
    # SeaweedFS can take 20 s to stop on SIGTERM; its data is disposable.
    if [[ -n $weed_pid ]]; then
        kill -9 "$weed_pid" 2>/dev/null || true
        wait "$weed_pid" 2>/dev/null || true
    fi
    # Its unix sockets (named by port, not movable) go with it.
    for p in "$s3port" $((s3port + 1)) $((s3port + 2)) $((s3port + 3)); do
        rm -f /tmp/seaweedfs-*-"$p".sock /tmp/seaweedfs-*-$((p + 10000)).sock
    done
    rm -rf "$tiers"
    return "$rc"
}
trap cleanup EXIT

say "the configuration in force (no file needed: built-in defaults)"
run ckptfs config

say "a DR receiver (ckptfs serve) on 127.0.0.1:$port"
ckptfs serve --root "$tiers/dr" --listen "127.0.0.1:$port" --key "$tiers/dr.key" 2>"$tiers/serve.log" &
serve_pid=$!
for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.05
done

say "an S3 object store: SeaweedFS on 127.0.0.1:$s3port, bucket ckpt-demo"
printf '{"identities":[{"name":"demo","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List"]}]}' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" > "$tiers/s3.json"
weed=/opt/ckptfs/seaweedfs/bin/weed
# -logdir: glog writes to /tmp by default, where nothing removes its files.
"$weed" -logdir="$tiers" server -dir="$tiers/s3" -ip=127.0.0.1 -master.port=$((s3port + 1)) -master.telemetry=false \
    -master.electionTimeout=500ms -volume.port=$((s3port + 2)) -volume.max=50 -filer.port=$((s3port + 3)) \
    -s3 -s3.port="$s3port" -s3.config="$tiers/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
    -s3.autoCreateBucket=false >"$tiers/weed.log" 2>&1 &
weed_pid=$!
for _ in $(seq 1 300); do
    echo "s3.bucket.create -name ckpt-demo" | timeout 20 "$weed" -logdir="$tiers" shell -master="127.0.0.1:$((s3port + 1))" 2>/dev/null \
        | grep -q "created bucket\|already exist" && break
    sleep 0.2
done

say "mount ckptfs at $mnt with all three tiers (returns once the mount is live)"
run ckptfs mount "$mnt" "${tier_flags[@]}"
run ckptfs status "$mnt"

say "an application writes three checkpoints as plain files (4 ranks x 16 MiB)"
for step in 1 2 3; do
    set_dir=$mnt/$job/step-000$step
    mkdir -p "$set_dir"
    writers=()
    for rank in 0 1 2 3; do
        head -c $((16 << 20)) /dev/urandom > "$set_dir/rank-$rank.bin" &
        writers+=($!)
    done
    wait "${writers[@]}"
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
run ckptfs mount "$mnt" "${tier_flags[@]}"
run ckptfs ls "$job"
echo "latest complete set:" >&2
run ckptfs latest "$job"

say "verify re-reads every chunk of the latest set"
run ckptfs verify "$job"

say "retention: the abandoned set is removed"
run ckptfs prune "$job"

say "the drain: every complete set to the PFS directory, the DR site and the S3 bucket"
run ckptfs "${tier_flags[@]}" drain "$job" --wait --timeout 10m
run ckptfs "${tier_flags[@]}" status
echo "on the PFS, plain files:" >&2
ls -R "$tiers/pfs/$job" | head -12 >&2
cp "$mnt/$job/step-0003/rank-2.bin" "$tiers/original-rank-2.bin"

say "a fresh node: the demo job is wiped from the cache"
run ckptfs umount "$mnt"
for s in $(ckptfs ls "$job" | awk 'NR > 1 && /^[^ ]/ {print $1}'); do
    ckptfs rm "$job" "$s" >/dev/null
done
ckptfs ls "$job" >/dev/null 2>&1 || echo "the cache holds no set of $job" >&2
run ckptfs mount "$mnt" "${tier_flags[@]}"
echo "ls $mnt/$job lists the sets the tiers hold (nothing fetched yet):" >&2
run ls -l "$mnt/$job"
echo "reading a file stages its set in from the first tier, verified:" >&2
run cmp "$mnt/$job/step-0003/rank-2.bin" "$tiers/original-rank-2.bin"
echo "identical" >&2
run ckptfs ls "$job"

say "restore from the DR site into a directory, verified chunk by chunk"
run ckptfs "${tier_flags[@]}" restore "$job" --to "$tiers/restored" --from dr
run cmp "$tiers/restored/rank-2.bin" "$tiers/original-rank-2.bin"
echo "identical" >&2

say "restore from the S3 bucket, verified chunk by chunk"
run ckptfs "${tier_flags[@]}" restore "$job" --to "$tiers/restored-s3" --from s3
run cmp "$tiers/restored-s3/rank-2.bin" "$tiers/original-rank-2.bin"
echo "identical" >&2

say "a flipped byte in the cache is caught (exit status 4)"
cache=$(dirname "$(dirname "$(ckptfs latest "$job" --path)")")
f=$cache/$job/step-0003/rank-1.bin
printf '\xff' | dd of="$f" bs=1 seek=3000000 conv=notrunc status=none
set +e
ckptfs verify "$job" step-0003
echo "exit status: $?" >&2
set -e

say "a C code checkpoints through libckpt into the same store (mounted mode: the daemon drains it)"
mkdir -p "$tiers/lib"
ln -sf "$PWD/target/release/libckpt.so" "$tiers/lib/libckpt.so.0"
run gcc -O2 -Iinclude -o "$tiers/heatdis" examples/heatdis.c \
    -L"$tiers/lib" -Wl,-rpath,"$tiers/lib" -l:libckpt.so.0
heat=(--n=256 --steps=1500 --every=100)
echo "an uninterrupted run, for reference:" >&2
run "$tiers/heatdis" --job="heatref-$$" "${heat[@]}" --out="$tiers/ref"
echo "the same run, killed with SIGKILL after step 900:" >&2
set +e
"$tiers/heatdis" --job="heat-$$" "${heat[@]}" --kill-at-step=900 --out="$tiers/run"
echo "exit status: $? (killed)" >&2
set -e
run ckptfs ls "heat-$$"
echo "restarted: it resumes from the newest complete checkpoint" >&2
run "$tiers/heatdis" --job="heat-$$" "${heat[@]}" --out="$tiers/run" --verbose
run cmp "$tiers/ref.0" "$tiers/run.0"
echo "bit-identical to the uninterrupted run" >&2

say "an unmodified process, dumped through CRIU with ckptfs-dump, killed, restored"
run gcc -O2 -o "$tiers/counter" ckptfs/tests/criu/counter.c
"$tiers/counter" "$tiers/count.log" &
counter=$!
sleep 1
run ckptfs-dump "$counter" --job "count-$$" --leave-running
dumped=$(tail -n1 "$tiers/count.log")
sleep 0.5
kill -9 "$counter"
wait "$counter" 2>/dev/null || true
killed_lines=$(wc -l < "$tiers/count.log")
echo "the dump was taken at about count $dumped; the process went on to $(tail -n1 "$tiers/count.log") and was killed" >&2
# The newest complete dump anywhere: once drained to every tier, a cache
# above its high watermark may already have evicted it (restore stages it in).
run ckptfs "${tier_flags[@]}" latest "count-$$"
run ckptfs-restore "count-$$" --detach
sleep 0.5
echo "the restored process's first counts: $(sed -n "$((killed_lines + 1)),$((killed_lines + 3))p" "$tiers/count.log" | tr '\n' ' ')(it goes on from the dump)" >&2
pkill -9 -f "$tiers/counter" || true

say "status of the mount"
run ckptfs status "$mnt"

say "unmount, and clean up the demo job"
run ckptfs umount "$mnt"
for j in "$job" "heat-$$" "heatref-$$" "count-$$"; do
    for s in $(ckptfs ls "$j" 2>/dev/null | awk 'NR > 1 && /^[^ ]/ {print $1}'); do
        ckptfs rm "$j" "$s" >/dev/null
    done
done
echo "demo finished: every step above ran against a real mount, the real store in $cache, a PFS directory, a DR receiver, an S3 object store, real gcc and real CRIU" >&2
