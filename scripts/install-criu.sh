#!/usr/bin/env bash
# Provides CRIU >= 4.2 for ckptfs-dump / ckptfs-restore.
#
# Debian 12's own criu (3.17) fails on current kernels' vDSO, and 4.1 cannot
# dump a process with a TCP socket; 4.2 works. When no such CRIU is on the
# PATH, this script takes Debian's own packages of a newer release (testing
# by default), reads them through a private apt configuration in a temporary
# directory (its own sources list, package lists and an empty dpkg status: the
# system's apt and dpkg are never touched), downloads criu and the closure of
# its libraries, and unpacks them into a private prefix:
#
#   $PREFIX/root/...      the unpacked packages (their own libc among them)
#   $PREFIX/bin/criu      a wrapper that starts criu through the prefix's
#                         dynamic loader with the prefix's libraries
#
# The system's libc is never replaced. ckptfs finds the wrapper by itself
# (it is the default `[criu] path` fallback). Idempotent: quiet when a good
# CRIU is already there. Needs root (for /opt) and Debian's package archive.
#
# Environment: CKPTFS_CRIU_PREFIX (default /opt/ckptfs/criu),
# CKPTFS_CRIU_SUITE (default testing), CKPTFS_DEBIAN_MIRROR (default: the
# system's Debian mirror), CKPTFS_CRIU_FORCE=1 to reinstall.
set -euo pipefail

PREFIX=${CKPTFS_CRIU_PREFIX:-/opt/ckptfs/criu}
SUITE=${CKPTFS_CRIU_SUITE:-testing}
MIN_MAJOR=4
MIN_MINOR=2

say() { echo "install-criu: $*" >&2; }
die() { say "$*"; exit 1; }

# "Version: 4.2" (criu --version) -> "4 2"
version_of() {
    "$@" --version 2>/dev/null | sed -n 's/^Version: *\([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -n1
}

good_enough() {
    local v major minor
    v=$(version_of "$@") || return 1
    [[ -n $v ]] || return 1
    read -r major minor <<<"$v"
    ((major > MIN_MAJOR || (major == MIN_MAJOR && minor >= MIN_MINOR)))
}

if [[ ${CKPTFS_CRIU_FORCE:-0} != 1 ]]; then
    if [[ -x $PREFIX/bin/criu ]] && good_enough "$PREFIX/bin/criu"; then
        exit 0
    fi
    if command -v criu >/dev/null 2>&1 && good_enough criu; then
        exit 0
    fi
fi

[[ $(id -u) -eq 0 ]] || die "need root to install CRIU into $PREFIX (run with sudo)"
for tool in apt-get dpkg dpkg-deb; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: this script needs Debian's apt and dpkg"
done
arch=$(dpkg --print-architecture)
case $arch in
amd64) loader=lib64/ld-linux-x86-64.so.2 triplet=x86_64-linux-gnu ;;
arm64) loader=lib/ld-linux-aarch64.so.1 triplet=aarch64-linux-gnu ;;
*) die "architecture $arch is not supported by this script" ;;
esac

mirror=${CKPTFS_DEBIAN_MIRROR:-}
if [[ -z $mirror ]]; then
    # The system's own Debian mirror (deb822 or one-line sources).
    mirror=$(grep -hs -E '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list \
        /etc/apt/sources.list.d/*.list 2>/dev/null |
        grep -oE 'https?://[^ ]*/debian/?' | grep -v security | head -n1 || true)
    mirror=${mirror:-http://deb.debian.org/debian}
fi
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[[ -r $keyring ]] || die "$keyring is missing (install debian-archive-keyring)"

say "installing CRIU from Debian $SUITE into $PREFIX"
work=$(mktemp -d /tmp/ckptfs-criu.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{lists/partial,archives/partial,debs,parts,prefs}
: >"$work/status"
echo "deb [arch=$arch signed-by=$keyring] $mirror $SUITE main" >"$work/sources.list"
aptc=(-o "Dir::Etc::SourceList=$work/sources.list"
      -o "Dir::Etc::SourceParts=$work/parts"
      -o "Dir::Etc::Preferences=$work/prefs/none"
      -o "Dir::Etc::PreferencesParts=$work/prefs"
      -o "Dir::State::Lists=$work/lists"
      -o "Dir::State::status=$work/status"
      -o "Dir::Cache=$work/cache"
      -o "Dir::Cache::archives=$work/archives"
      -o "APT::Architecture=$arch"
      -o "APT::Architectures=$arch"
      -o "Debug::NoLocking=1"
      -o "APT::Sandbox::User=root"
      -o "Acquire::Languages=none")
apt-get "${aptc[@]}" -qq update || die "could not read the package lists of Debian $SUITE from $mirror"

# criu and every package it needs, recursively (an empty dpkg status: the
# prefix must not lean on the system's libraries).
mapfile -t pkgs < <(apt-cache "${aptc[@]}" depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances criu 2>/dev/null |
    grep -v '^ ' | grep -v '^<' | sort -u)
((${#pkgs[@]})) || die "criu is not in Debian $SUITE"
printf '%s\n' "${pkgs[@]}" | grep -qx criu || die "criu is not in Debian $SUITE"

# Keep what criu runs with: libraries and criu itself. Shells, perl and the
# like are pulled in by maintainer scripts we never run.
skip='^(debconf|perl-base|dpkg|tar|coreutils|bash|dash|base-files|base-passwd|sensible-utils|init-system-helpers|adduser|passwd|login|util-linux|mount|gcc-[0-9]+-base|debianutils|sed|grep|findutils|diffutils|install-info|mawk|ncurses-base|ncurses-bin)$'
want=()
for p in "${pkgs[@]}"; do
    [[ $p =~ $skip ]] || want+=("$p")
done
(cd "$work/debs" && apt-get "${aptc[@]}" -qq download "${want[@]}" >/dev/null) ||
    die "downloading ${want[*]} failed"

stage="$PREFIX.new"
rm -rf "$stage"
mkdir -p "$stage/root" "$stage/bin"
for deb in "$work"/debs/*.deb; do
    dpkg-deb -x "$deb" "$stage/root" || die "unpacking $deb failed"
done
[[ -e $stage/root/$loader ]] || {
    # usrmerged packages ship the loader under /usr.
    mkdir -p "$(dirname "$stage/root/$loader")"
    ln -sf "/usr/$loader" "$stage/root/$loader"
}
real_loader=$stage/root/usr/$loader
[[ -e $real_loader ]] || real_loader=$stage/root/$loader
[[ -e $stage/root/usr/sbin/criu ]] || die "the criu package did not contain usr/sbin/criu"
loader_rel=${real_loader#"$stage"/}

cat >"$stage/bin/criu" <<EOF
#!/bin/sh
# Starts CRIU from Debian $SUITE through its own dynamic loader and
# libraries (written by ckptfs's scripts/install-criu.sh).
P='$PREFIX'
L="\$P/root/usr/lib/$triplet:\$P/root/lib/$triplet:\$P/root/usr/lib:\$P/root/lib"
exec "\$P/$loader_rel" --library-path "\$L" "\$P/root/usr/sbin/criu" "\$@"
EOF
chmod 0755 "$stage/bin/criu"
printf 'suite=%s\nmirror=%s\npackages=%s\n' "$SUITE" "$mirror" "${want[*]}" >"$stage/SOURCE"

rm -rf "$PREFIX.old"
[[ -e $PREFIX ]] && mv "$PREFIX" "$PREFIX.old"
mv "$stage" "$PREFIX"
rm -rf "$PREFIX.old"

good_enough "$PREFIX/bin/criu" || {
    "$PREFIX/bin/criu" --version >&2 || true
    die "the CRIU unpacked into $PREFIX does not run or is older than $MIN_MAJOR.$MIN_MINOR"
}
say "CRIU $(version_of "$PREFIX/bin/criu" | tr ' ' .) installed: $PREFIX/bin/criu"
