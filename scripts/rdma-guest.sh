#!/usr/bin/env bash
# Runs a command inside a throwaway QEMU guest that has a soft-RoCE device
# (rdma_rxe), for the RDMA tests: the host kernel has no RDMA stack at all.
#
#   bash scripts/rdma-guest.sh prepare
#   bash scripts/rdma-guest.sh run [--share DIR]... -- CMD [ARGS...]
#
# The guest boots Debian 12's stock kernel (downloaded with apt-get download
# and unpacked into the cache, never installed on the host) with a tiny
# busybox initramfs that loads the RDMA, virtio and 9p modules by hand. It
# then mounts the host's whole root filesystem read-only over 9p and chroots
# into it, so host-built binaries find the very libraries, libibverbs
# providers and tools they were built against, at the same absolute paths.
# The current directory and every --share DIR are mounted read-write at their
# own paths on top; /tmp, /var/tmp, /run and /dev/shm are the guest's own
# tmpfs (so host files there are not seen unless shared). Inside, CMD runs as root in the caller's directory with
# CKPTFS_RDMA_GUEST=1 and CKPTFS_RDMA_IP=<guest eth0 address> (rxe0 sits on
# eth0; RDMA traffic never leaves the guest), plus RUST_LOG, RUST_BACKTRACE,
# CKPTFS_* and CKPT_* from the caller. Its stdout and stderr stream to ours.
#
# `run` exits with CMD's exit code, or
#   124  CMD was still running after RDMA_GUEST_TIMEOUT seconds (guest killed)
#   125  the guest could not be set up, or died while CMD ran
#
# Settings (environment):
#   RDMA_GUEST_TIMEOUT=900       seconds CMD may run
#   RDMA_GUEST_BOOT_TIMEOUT=60   seconds each of boot and setup may take before
#                                the guest is killed and booted again
#   RDMA_GUEST_TRIES=3           boots to try (about 1 in 20 hangs early)
#   RDMA_GUEST_CPUS=2  RDMA_GUEST_MEM=3G
#   RDMA_GUEST_ACCEL=tcg         or kvm, only where /dev/kvm runs a stock kernel
#   RDMA_GUEST_CACHE=/var/cache/ckptfs-guest
#   RDMA_GUEST_KERNEL=linux-image-6.1.0-NN-amd64   default: the one
#                                linux-image-amd64 depends on
#   RDMA_GUEST_ENV="VAR ..."     more variables to pass to CMD
set -euo pipefail

# Bump when the cached kernel directory's layout changes. The initramfs needs
# no bump: its cache key is a hash of everything that goes into it.
CACHE_LAYOUT=1
CACHE=${RDMA_GUEST_CACHE:-/var/cache/ckptfs-guest}
GUEST_IP=10.0.2.15
GUEST_PREFIX=24

PACKAGES=(qemu-system-x86 busybox-static ibverbs-providers ibverbs-utils rdmacm-utils perftest iproute2
          xz-utils zstd)
# Loaded in this order after their dependencies. crc32_generic comes first
# because rdma_rxe asks the crypto API for crc32 and no dependency names it.
MODULES=(crc32_generic virtio_pci virtio_net virtio_console 9pnet_virtio 9p
         ib_core ib_uverbs rdma_rxe ib_cm iw_cm rdma_cm rdma_ucm)

log() { echo "rdma-guest: $*" >&2; }
die() {
    log "$*"
    exit 125
}
usage() {
    cat >&2 <<'MSG'
usage: bash scripts/rdma-guest.sh prepare
       bash scripts/rdma-guest.sh run [--share DIR]... -- CMD [ARGS...]
MSG
    exit 2
}

# ---------------------------------------------------------------- prepare ---

APT_UPDATED=
apt_update() {
    [[ -n $APT_UPDATED ]] && return 0
    apt-get update -qq >&2 || die "apt-get update failed: check the Debian mirror in /etc/apt/sources.list"
    APT_UPDATED=1
}

ensure_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    log "installing ${missing[*]}"
    [[ $(id -u) -eq 0 ]] || die "need root to install packages (run with sudo)"
    export DEBIAN_FRONTEND=noninteractive
    apt_update
    # Our stdout is CMD's output, so apt's chatter goes to stderr.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed"
}

# The kernel package the guest boots: the current one of Debian's
# linux-image-amd64 metapackage (the mirror drops older ABIs).
resolve_kernel() {
    if [[ -n ${RDMA_GUEST_KERNEL:-} ]]; then
        echo "$RDMA_GUEST_KERNEL"
        return
    fi
    local pkg try
    for try in 1 2; do
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
            awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
        [[ -n $pkg ]] && break
        [[ $try -eq 1 ]] && apt_update
    done
    [[ -n $pkg ]] || die "apt-cache depends linux-image-amd64 names no linux-image-<version> package:" \
        "check the Debian 12 mirror in /etc/apt/sources.list, or set RDMA_GUEST_KERNEL"
    echo "$pkg"
}

u8() { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '; }
u32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }

# The uncompressed vmlinux inside a bzImage, as the kernel tree's
# extract-vmlinux finds it. QEMU boots that ELF straight through its PVH
# entry, which skips the slow (under TCG) self-decompression of the bzImage.
# The boot header says exactly where the compressed payload is.
extract_vmlinux() {
    local img=$1 out=$2 setup off len start magic dec
    [[ $(od -An -tx1 -j 514 -N4 "$img" | tr -d ' \n') == 48647253 ]] ||
        die "$img is not a bzImage (no HdrS boot header)"
    setup=$(u8 "$img" $((0x1f1)))
    off=$(u32 "$img" $((0x248)))
    len=$(u32 "$img" $((0x24c)))
    ((setup)) || setup=4
    start=$(((setup + 1) * 512 + off))
    magic=$(od -An -tx1 -j "$start" -N6 "$img" | tr -d ' \n')
    case $magic in
        fd377a585a00) dec=(xz -dc) ;;
        28b52ffd*) dec=(zstd -dcq) ;;
        1f8b*) dec=(gzip -dc) ;;
        *) die "$img: kernel payload compressed in an unknown format (magic $magic); xz, zstd and gzip are supported" ;;
    esac
    # The payload ends in 4 bytes of uncompressed size for the kernel's own
    # decompressor; the tools would call them garbage.
    dd if="$img" iflag=skip_bytes,count_bytes skip="$start" count=$((len - 4)) status=none |
        "${dec[@]}" >"$out" || die "could not decompress the kernel in $img"
    [[ $(od -An -c -N4 "$out" | tr -d ' ') == 177ELF ]] || die "$img did not contain an ELF vmlinux"
}

# A module's own text, whatever Debian compressed it with.
module_cat() {
    case $1 in
        *.ko) cat "$1" ;;
        *.ko.xz) xz -dc "$1" ;;
        *.ko.zst) zstd -dcq "$1" ;;
        *.ko.gz) gzip -dc "$1" ;;
        *) die "unknown module format: $1" ;;
    esac
}

declare -A KO_PATH=() BUILTIN=() SEEN=()
MODULE_ORDER=()
# Depth-first over the depends= entry of each module's .modinfo, so that
# every module comes after what it needs (the package ships no modules.dep
# and the host may have no kmod).
add_module() {
    local m=${1//-/_} f deps d
    [[ -n ${SEEN[$m]:-} ]] && return 0
    SEEN[$m]=1
    [[ -n ${BUILTIN[$m]:-} ]] && return 0
    f=${KO_PATH[$m]:-}
    [[ -n $f ]] || die "kernel module $m is not in the kernel package"
    deps=$(module_cat "$f" | tr '\0' '\n' | sed -n 's/^depends=//p' | head -n1)
    for d in ${deps//,/ }; do
        add_module "$d"
    done
    MODULE_ORDER+=("$m")
}

# Downloads and unpacks kernel package $1, keeps its vmlinux and the modules
# the guest loads in $2, and drops the rest (the unpacked package is ~400 MB).
fetch_kernel() {
    local pkg=$1 dest=$2 tmp deb kver moddir f n m
    tmp=$(mktemp -d "$CACHE/tmp.XXXXXX")
    TMP_DIRS+=("$tmp")
    log "fetching $pkg (once per kernel version)"
    # The sandbox user _apt may not write to our cache directory.
    if ! (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2); then
        # A stale package list names a version the mirror no longer has.
        apt_update
        (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "$pkg" >&2) ||
            die "apt-get download $pkg failed: check the Debian mirror, or set RDMA_GUEST_KERNEL"
    fi
    deb=$(echo "$tmp"/*.deb)
    dpkg -x "$deb" "$tmp/root" || die "could not unpack $deb"
    rm -f "$deb"
    moddir=$(echo "$tmp"/root/lib/modules/*)
    kver=${moddir##*/}
    [[ -d $moddir && -f $tmp/root/boot/vmlinuz-$kver ]] || die "$pkg has no /boot/vmlinuz or /lib/modules"
    mkdir -p "$tmp/out/modules"
    extract_vmlinux "$tmp/root/boot/vmlinuz-$kver" "$tmp/out/vmlinux"

    while IFS= read -r -d '' f; do
        n=${f##*/}
        n=${n%%.ko*}
        KO_PATH[${n//-/_}]=$f
    done < <(find "$moddir" -name '*.ko*' -print0)
    if [[ -f $moddir/modules.builtin ]]; then
        while IFS= read -r f; do
            n=${f##*/}
            n=${n%%.ko*}
            BUILTIN[${n//-/_}]=1
        done <"$moddir/modules.builtin"
    fi
    for m in "${MODULES[@]}"; do
        add_module "$m"
    done
    for m in "${MODULE_ORDER[@]}"; do
        module_cat "${KO_PATH[$m]}" >"$tmp/out/modules/$m.ko"
    done
    printf '%s\n' "${MODULE_ORDER[@]}" >"$tmp/out/modules.order"
    echo "$kver" >"$tmp/out/kernel.release"
    echo "${MODULES[*]}" >"$tmp/out/modules.wanted"
    rm -rf "$dest"
    mv "$tmp/out" "$dest"
    rm -rf "$tmp"
}

# A kernel directory fit for this version of the script.
kernel_ok() {
    [[ -f $1/vmlinux && -f $1/modules.order && -f $1/modules.wanted ]] &&
        [[ $(cat "$1/modules.wanted") == "${MODULES[*]}" ]]
}

# PID 1 of the guest, run by busybox sh from the initramfs. It writes
# "ckptfs-guest: ..." marker lines to the console (ttyS0) that the host
# follows: init (the boot worked), ready (rxe0 is up, CMD starts),
# setup-failed: WHY, exit=N.
read -r -d '' GUEST_INIT <<'INIT' || true
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
say() { echo "ckptfs-guest: $*" >/dev/console; }
say init

fail() {
    say "setup-failed: $*"
    dmesg | tail -n 15 >/dev/console
    sync
    reboot -f
    sleep 60
}
# Polls for up to $1 tenths of a second until the command after it succeeds.
waitfor() {
    n=$1
    shift
    while ! "$@" 2>/dev/null; do
        n=$((n - 1))
        [ "$n" -gt 0 ] || return 1
        sleep 0.1
    done
}

# Busybox insmod cannot resolve dependencies; the host put the modules in order.
while read -r m; do
    insmod "/lib/modules/$m.ko" || fail "insmod $m"
done </etc/modules

nine() { mount -t 9p -o "trans=virtio,version=9p2000.L,msize=512000,$1" "$2" "$3"; }
mkdir -p /job
nine cache=none job /job || fail "mount of the job directory over 9p"
ip=$(cat /job/ip)

R=/newroot
nine ro,cache=loose hostroot $R || fail "mount of the host root over 9p"
mount -t proc proc $R/proc || fail "mount proc"
mount -t sysfs sysfs $R/sys || fail "mount sysfs"
mount -t devtmpfs devtmpfs $R/dev || fail "mount devtmpfs"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts || fail "mount devpts"
ln -sf /proc/self/fd $R/dev/fd
ln -sf /proc/self/fd/0 $R/dev/stdin
ln -sf /proc/self/fd/1 $R/dev/stdout
ln -sf /proc/self/fd/2 $R/dev/stderr
for d in /dev/shm /tmp /var/tmp /run; do
    mount -t tmpfs -o mode=1777 tmpfs "$R$d" || fail "mount tmpfs on $d"
done
chmod 755 $R/run
mkdir -p $R/run/lock
# Read-write shares, parents before children (the host sorted them).
while read -r tag dir; do
    mkdir -p "$R$dir" 2>/dev/null
    nine cache=mmap "$tag" "$R$dir" || fail "mount of $dir over 9p"
done </job/shares

hostname rdma-guest
ip link set lo up
waitfor 50 test -e /sys/class/net/eth0 || fail "no eth0 (virtio_net)"
ip addr add "$ip" dev eth0 || fail "ip addr add $ip dev eth0"
ip link set eth0 up || fail "ip link set eth0 up"
chroot $R rdma link add rxe0 type rxe netdev eth0 >/dev/console 2>&1 || fail "rdma link add rxe0 type rxe netdev eth0"
waitfor 100 grep -q ACTIVE /sys/class/infiniband/rxe0/ports/1/state || fail "rxe0 port never became ACTIVE"
waitfor 50 test -c /dev/infiniband/uverbs0 || fail "no /dev/infiniband/uverbs0"

out= err=
for p in /sys/class/virtio-ports/*; do
    case $(cat "$p/name") in
        ckptfs.out) out=/dev/${p##*/} ;;
        ckptfs.err) err=/dev/${p##*/} ;;
    esac
done
[ -n "$out" ] && [ -n "$err" ] || fail "no virtio ports for the command's output"
cp /job/job.sh $R/run/ckptfs-job.sh

ulimit -l unlimited
say ready
chroot $R /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root USER=root LOGNAME=root TERM=dumb /bin/bash /run/ckptfs-job.sh <"/dev/null" >"$out" 2>"$err"
rc=$?
# Write back what CMD left on the read-write shares before the host is told.
sync
say "exit=$rc"
reboot -f
sleep 60
INIT

# Builds (once per content) the initramfs for kernel directory $1 and sets
# INITRD to it.
build_initramfs() {
    local kdir=$1 hash stage m busybox
    busybox=$(command -v busybox) || die "busybox not found (package busybox-static)"
    hash=$({
        printf '%s' "$GUEST_INIT"
        cat "$kdir/modules.order" "$busybox"
    } | sha256sum | cut -c1-16)
    INITRD=$kdir/initramfs-$hash.cpio
    [[ -f $INITRD ]] && return 0
    stage=$(mktemp -d "$CACHE/tmp.XXXXXX")
    TMP_DIRS+=("$stage")
    mkdir -p "$stage"/{bin,dev,proc,sys,etc,newroot,lib/modules}
    cp "$busybox" "$stage/bin/busybox"
    # The kernel opens /dev/console for init before anything can mount /dev.
    mknod -m 600 "$stage/dev/console" c 5 1
    while read -r m; do
        cp "$kdir/modules/$m.ko" "$stage/lib/modules/"
    done <"$kdir/modules.order"
    cp "$kdir/modules.order" "$stage/etc/modules"
    printf '%s\n' "$GUEST_INIT" >"$stage/init"
    chmod 755 "$stage/init"
    # Uncompressed: the kernel unpacks it much faster than it decompresses.
    (cd "$stage" && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null) >"$INITRD.tmp" ||
        die "could not build the initramfs"
    rm -f "$kdir"/initramfs-*.cpio
    mv "$INITRD.tmp" "$INITRD"
    rm -rf "$stage"
}

TMP_DIRS=()
KDIR= INITRD=
prepare() {
    ensure_packages
    [[ $CACHE == /* && $CACHE != *[[:space:],]* ]] ||
        die "RDMA_GUEST_CACHE must be an absolute path without spaces or commas: $CACHE"
    mkdir -p "$CACHE" || die "cannot create the cache directory $CACHE"
    # Concurrent runs must not build the same cache at once.
    exec 9>"$CACHE/.lock"
    flock 9
    local d pkg
    if [[ -n ${RDMA_GUEST_KERNEL:-} ]]; then
        d=$CACHE/$RDMA_GUEST_KERNEL-v$CACHE_LAYOUT
        kernel_ok "$d" && KDIR=$d
    else
        # Whatever kernel is cached will do: no network and no apt look-up
        # once prepared.
        while IFS= read -r d; do
            kernel_ok "$d" && KDIR=$d
        done < <(printf '%s\n' "$CACHE"/linux-image-*-v"$CACHE_LAYOUT" | sort -V)
    fi
    if [[ -z $KDIR ]]; then
        pkg=$(resolve_kernel)
        KDIR=$CACHE/$pkg-v$CACHE_LAYOUT
        fetch_kernel "$pkg" "$KDIR"
        # Only one kernel is ever used: drop older ones and older layouts.
        for d in "$CACHE"/linux-image-*; do
            [[ -e $d && $d != "$KDIR" ]] && rm -rf "$d"
        done
    fi
    build_initramfs "$KDIR"
    exec 9>&-
}

# -------------------------------------------------------------------- run ---

QEMU_PID= OUT_TAIL= ERR_TAIL= JOB=

now_ms() {
    local t=${EPOCHREALTIME//[!0-9]/}
    echo $((t / 1000))
}
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }

stop_qemu() {
    [[ -n $QEMU_PID ]] || return 0
    local i
    kill -TERM "$QEMU_PID" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$QEMU_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$QEMU_PID" 2>/dev/null || true
    wait "$QEMU_PID" 2>/dev/null || true
    QEMU_PID=
}

stop_tails() {
    local p
    for p in $OUT_TAIL $ERR_TAIL; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    OUT_TAIL= ERR_TAIL=
}

cleanup() {
    stop_qemu
    stop_tails
    [[ -n $JOB ]] && rm -rf "$JOB"
    ((${#TMP_DIRS[@]})) && rm -rf "${TMP_DIRS[@]}"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The marker lines the guest wrote to its console so far.
markers() { tr -d '\r' <"$JOB/console" | sed -n 's/^ckptfs-guest: //p'; }
# Whether marker list $1 has a line matching $2 (a glob).
has() {
    local line
    while IFS= read -r line; do
        # shellcheck disable=SC2053 # $2 is a glob on purpose
        [[ $line == $2 ]] && return 0
    done <<<"$1"
    return 1
}

# Kernel messages (errors only, loglevel=3) printed while CMD ran: an rxe
# or 9p complaint there often explains a failing RDMA test.
relay_kernel_log() {
    tr -d '\r' <"$JOB/console" |
        awk '/^ckptfs-guest: ready$/ { on = 1; next } /^ckptfs-guest: exit=/ { exit } on' |
        sed 's/^/rdma-guest: guest kernel: /' >&2 || true
}

show_console() {
    log "last lines of the guest console ($1):"
    if [[ -s $JOB/console ]]; then
        tr -d '\r' <"$JOB/console" | tail -n 25 | sed 's/^/    /' >&2
    else
        echo "    (nothing)" >&2
    fi
    if grep -qv 'hub 0 is not connected' "$JOB/qemu.log"; then
        log "qemu said:"
        grep -v 'hub 0 is not connected' "$JOB/qemu.log" | tail -n 10 | sed 's/^/    /' >&2
    fi
}

# Host directories as qemu option values: commas are doubled.
qarg() { echo "${1//,/,,}"; }

run() {
    local shares=() d
    while (($#)); do
        case $1 in
            --share)
                (($# >= 2)) || usage
                shares+=("$2")
                shift 2
                ;;
            --share=*)
                shares+=("${1#--share=}")
                shift
                ;;
            --)
                shift
                break
                ;;
            *) usage ;;
        esac
    done
    (($#)) || usage
    # The command starts in the caller's directory and may write there. The
    # guest's own tmpfs directories stay the guest's: their contents (unix
    # sockets, say) need no host copy, and cd into them works anyway.
    case $PWD in
        / | /tmp | /var/tmp | /run | /dev/shm) ;;
        *) shares+=("$PWD") ;;
    esac

    local -A seen=()
    local dirs=()
    for d in "${shares[@]}"; do
        [[ -d $d ]] || die "--share $d: not a directory"
        d=$(cd "$d" && pwd -P)
        [[ $d == / || -n ${seen[$d]:-} ]] && continue
        [[ $d != *$'\n'* ]] || die "--share: directory name with a newline"
        seen[$d]=1
        dirs+=("$d")
    done

    prepare

    local timeout=${RDMA_GUEST_TIMEOUT:-900} boot_timeout=${RDMA_GUEST_BOOT_TIMEOUT:-60}
    local tries=${RDMA_GUEST_TRIES:-3} accel=${RDMA_GUEST_ACCEL:-tcg}
    local cpus=${RDMA_GUEST_CPUS:-2} mem=${RDMA_GUEST_MEM:-3G}

    mkdir -p "$CACHE/runs"
    # Left behind by runs that were SIGKILLed.
    find "$CACHE/runs" -mindepth 1 -maxdepth 1 -mmin +1440 -exec rm -rf {} + 2>/dev/null || true
    JOB=$(mktemp -d "$CACHE/runs/job.XXXXXX")
    echo "$GUEST_IP/$GUEST_PREFIX" >"$JOB/ip"
    # Parents are mounted before their children.
    local i=0
    : >"$JOB/shares"
    while IFS= read -r d; do
        [[ -n $d ]] || continue
        printf 's%d %s\n' "$i" "$d" >>"$JOB/shares"
        i=$((i + 1))
    done < <(printf '%s\n' "${dirs[@]}" | awk '{ print length($0) "\t" $0 }' | sort -n | cut -f2-)

    local v passenv=()
    for v in $(compgen -e); do
        case $v in
            RUST_LOG | RUST_BACKTRACE | CKPTFS_* | CKPT_*) passenv+=("$v") ;;
        esac
    done
    for v in ${RDMA_GUEST_ENV:-}; do
        [[ -v $v ]] && passenv+=("$v")
    done
    {
        echo "# Written by rdma-guest.sh; run by the guest's bash inside the chroot."
        printf 'cd -- %q || { echo "rdma-guest: cannot cd to %q in the guest" >&2; exit 125; }\n' "$PWD" "$PWD"
        for v in "${passenv[@]}"; do
            printf 'export %s=%q\n' "$v" "${!v}"
        done
        printf 'export CKPTFS_RDMA_GUEST=1 CKPTFS_RDMA_IP=%q\n' "$GUEST_IP"
        printf 'exec'
        printf ' %q' "$@"
        printf '\n'
    } >"$JOB/job.sh"

    # qemu dies with this script even if the script is SIGKILLed.
    local qemu=(setpriv --pdeathsig KILL qemu-system-x86_64 -name ckptfs-rdma-guest -machine pc -nodefaults -no-user-config
        -display none -no-reboot -smp "$cpus" -m "$mem")
    case $accel in
        tcg) qemu+=(-accel tcg,thread=multi -cpu max) ;;
        kvm) qemu+=(-accel kvm -cpu host) ;;
        *) die "RDMA_GUEST_ACCEL must be tcg or kvm, not $accel" ;;
    esac
    qemu+=(-kernel "$KDIR/vmlinux" -initrd "$INITRD"
        # loglevel=4 keeps kernel errors (KERN_ERR) and nothing chattier.
        -append "console=ttyS0 quiet loglevel=4 panic=-1 mitigations=off"
        -serial "file:$JOB/console"
        # eth0 only needs to exist and be up: rxe0 talks to itself over it.
        # A hub port with nothing else on it sends no packet anywhere.
        -netdev hubport,id=net0,hubid=0 -device virtio-net-pci,netdev=net0,romfile=
        -device virtio-serial-pci
        -chardev "file,id=out,path=$JOB/out" -device virtserialport,chardev=out,name=ckptfs.out
        -chardev "file,id=err,path=$JOB/err" -device virtserialport,chardev=err,name=ckptfs.err
        -virtfs "local,path=$(qarg "$JOB"),mount_tag=job,security_model=none"
        -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
    local tag
    while read -r tag d; do
        qemu+=(-virtfs "local,path=$(qarg "$d"),mount_tag=$tag,security_model=none,multidevs=remap")
    done <"$JOB/shares"

    local try t0 t_init t_ready now state m qrc rc=125
    for ((try = 1; try <= tries; try++)); do
        log "booting (try $try/$tries)..."
        : >"$JOB/console"
        : >"$JOB/out"
        : >"$JOB/err"
        t0=$(now_ms)
        "${qemu[@]}" </dev/null >"$JOB/qemu.log" 2>&1 &
        QEMU_PID=$!
        state=boot
        while :; do
            sleep 0.2
            now=$(now_ms)
            m=$(markers)
            case $state in
                boot)
                    if has "$m" init; then
                        t_init=$now
                        log "guest up in $(secs $((now - t0))) s"
                        state=setup
                    elif ! kill -0 "$QEMU_PID" 2>/dev/null; then
                        qrc=0
                        wait "$QEMU_PID" || qrc=$?
                        QEMU_PID=
                        if [[ $qrc -ne 0 && ! -s $JOB/console ]]; then
                            # Not a guest that reset while booting (qemu
                            # exits 0 then): qemu itself refused to start,
                            # and would again.
                            show_console "qemu exited with $qrc"
                            die "qemu could not start the guest; see what it said above"
                        fi
                        show_console "qemu exited during boot"
                        break
                    elif ((now - t0 > boot_timeout * 1000)); then
                        show_console "guest did not reach /init within $boot_timeout s"
                        break
                    fi
                    ;;
                setup)
                    if has "$m" "setup-failed:*"; then
                        show_console "setup failed"
                        die "the guest could not set up rxe0; see its console above"
                    elif has "$m" ready; then
                        t_ready=$now
                        log "rxe0 ready after $(secs $((now - t_init))) s of setup; running ${*@Q}"
                        # They end once qemu has, after copying the rest.
                        setpriv --pdeathsig TERM tail -n +1 -s 0.2 -f --pid="$QEMU_PID" "$JOB/out" &
                        OUT_TAIL=$!
                        setpriv --pdeathsig TERM tail -n +1 -s 0.2 -f --pid="$QEMU_PID" "$JOB/err" >&2 &
                        ERR_TAIL=$!
                        state=run
                    elif ! kill -0 "$QEMU_PID" 2>/dev/null; then
                        show_console "qemu exited during setup"
                        break
                    elif ((now - t_init > boot_timeout * 1000)); then
                        show_console "guest setup did not finish within $boot_timeout s"
                        break
                    fi
                    ;;
                run)
                    if [[ $'\n'$m =~ $'\n'exit=([0-9]+) ]]; then
                        rc=${BASH_REMATCH[1]}
                        # The guest reboots (which ends qemu) right away; a
                        # guest that hangs there is killed.
                        for ((i = 0; i < 100; i++)); do
                            kill -0 "$QEMU_PID" 2>/dev/null || break
                            sleep 0.1
                        done
                        stop_qemu
                        wait "$OUT_TAIL" "$ERR_TAIL" 2>/dev/null || true
                        OUT_TAIL= ERR_TAIL=
                        relay_kernel_log
                        log "command exited with $rc; whole run took $(secs $(($(now_ms) - t0))) s"
                        return "$rc"
                    elif ! kill -0 "$QEMU_PID" 2>/dev/null; then
                        wait "$OUT_TAIL" "$ERR_TAIL" 2>/dev/null || true
                        OUT_TAIL= ERR_TAIL=
                        show_console "guest died while the command ran"
                        die "the guest died before the command finished"
                    elif ((now - t_ready > timeout * 1000)); then
                        stop_qemu
                        stop_tails
                        relay_kernel_log
                        log "command timed out after $timeout s (RDMA_GUEST_TIMEOUT); guest killed"
                        return 124
                    fi
                    ;;
            esac
        done
        stop_qemu
    done
    die "the guest did not come up in $tries tries"
}

main() {
    case ${1:-} in
        prepare)
            (($# == 1)) || usage
            prepare
            ;;
        run)
            shift
            run "$@"
            ;;
        *) usage ;;
    esac
}

# On one line, so that bash has read all of it before running: an edit of
# this file then cannot change a run that is under way.
main "$@"; exit
