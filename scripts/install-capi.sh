#!/usr/bin/env bash
# Build libckpt (the C ABI of ckptfs, crate capi/) and install it for C,
# C++ and Fortran codes:
#
#   $PREFIX/lib/libckpt.so.X.Y.Z, libckpt.so.X, libckpt.so   shared library
#   $PREFIX/lib/libckpt.a                                     static library
#   $PREFIX/lib/libckpt_fortran.a                             Fortran module code
#   $PREFIX/include/ckpt.h, ckpt.f90, ckpt.mod                header, Fortran module
#   $PREFIX/lib/pkgconfig/ckpt.pc, ckpt-fortran.pc            pkg-config
#
#   PREFIX=/usr/local bash scripts/install-capi.sh
#
# Variables:
#   PREFIX      where to install (default /usr/local)
#   LIBDIR      default $PREFIX/lib; INCLUDEDIR default $PREFIX/include
#   DESTDIR     staging root for packagers: files go to $DESTDIR$PREFIX/...,
#               while ckpt.pc still says $PREFIX
#   PROFILE     cargo profile to build and install (default release)
#   NO_BUILD=1  install what the last build left, without running cargo
#   BUILD_DIR   take libckpt.so and libckpt.a from this directory instead of
#               cargo's <target>/<profile> (implies NO_BUILD=1)
#   FC          Fortran compiler for ckpt.mod (default gfortran; if none is
#               found, the Fortran module is installed as source only)
#   CARGO_TARGET_DIR is honoured like cargo does.
#
# Running it again installs again over the same files (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'install-capi: error: %s\n' "$*" >&2; exit 1; }

PREFIX=${PREFIX:-/usr/local}
[[ $PREFIX == /* ]] || die "PREFIX must be an absolute path (got '$PREFIX')"
PREFIX=${PREFIX%/}
LIBDIR=${LIBDIR:-$PREFIX/lib}
INCLUDEDIR=${INCLUDEDIR:-$PREFIX/include}
DESTDIR=${DESTDIR:-}
PROFILE=${PROFILE:-release}
FC=${FC:-gfortran}

# The ABI version, from the header that is the contract.
ver() { sed -n "s/^#define CKPT_VERSION_$1 \\([0-9][0-9]*\\).*/\\1/p" include/ckpt.h; }
major=$(ver MAJOR)
minor=$(ver MINOR)
patch=$(ver PATCH)
[[ -n $major && -n $minor && -n $patch ]] || die "no CKPT_VERSION_* in include/ckpt.h"
version=$major.$minor.$patch

if [[ -n ${BUILD_DIR:-} ]]; then
    NO_BUILD=1
fi
if [[ ${NO_BUILD:-0} != 1 ]]; then
    command -v cargo >/dev/null || die "cargo not found (install Rust, or NO_BUILD=1 to install a finished build)"
    say "building libckpt (cargo build --profile $PROFILE -p ckpt-capi)"
    cargo build --locked --profile "$PROFILE" -p ckpt-capi >&2
fi

if [[ -n ${BUILD_DIR:-} ]]; then
    out=$BUILD_DIR
else
    if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
        target=$CARGO_TARGET_DIR
    else
        target=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
            grep -o '"target_directory":"[^"]*"' | head -n1 | cut -d'"' -f4)
        target=${target:-$repo/target}
    fi
    # cargo's directory for the dev profile is "debug".
    profdir=$PROFILE
    [[ $PROFILE == dev ]] && profdir=debug
    out=$target/$profdir
fi
for f in libckpt.so libckpt.a; do
    [[ -f $out/$f ]] || die "$out/$f is missing: did 'cargo build --profile $PROFILE -p ckpt-capi' succeed?"
done

# The soname is what programs linked against libckpt.so will look for.
soname=
if command -v readelf >/dev/null; then
    soname=$(readelf -d "$out/libckpt.so" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
elif command -v objdump >/dev/null; then
    soname=$(objdump -p "$out/libckpt.so" | awk '$1 == "SONAME" { print $2 }')
fi
if [[ -z $soname ]]; then
    say "warning: $out/libckpt.so has no SONAME; programs will record 'libckpt.so' instead of libckpt.so.$major"
elif [[ $soname != libckpt.so.$major ]]; then
    say "warning: $out/libckpt.so has SONAME $soname, expected libckpt.so.$major"
fi

lib=$DESTDIR$LIBDIR
inc=$DESTDIR$INCLUDEDIR
pc=$lib/pkgconfig
mkdir -p "$lib" "$inc" "$pc"

say "installing into ${DESTDIR:+$DESTDIR (staging) }$PREFIX"
install -m 0755 "$out/libckpt.so" "$lib/libckpt.so.$version"
ln -sfn "libckpt.so.$version" "$lib/libckpt.so.$major"
ln -sfn "libckpt.so.$major" "$lib/libckpt.so"
install -m 0644 "$out/libckpt.a" "$lib/libckpt.a"
install -m 0644 include/ckpt.h "$inc/ckpt.h"
install -m 0644 include/ckpt.f90 "$inc/ckpt.f90"

# The Fortran module: ckpt.mod for `use ckpt` (gfortran's format, tied to
# the compiler's version) and the wrappers' object code.
fortran=0
if command -v "$FC" >/dev/null; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$FC" -O2 -fPIC -c include/ckpt.f90 -J "$tmp" -o "$tmp/ckpt.o"
    ar rcs "$tmp/libckpt_fortran.a" "$tmp/ckpt.o"
    install -m 0644 "$tmp/ckpt.mod" "$inc/ckpt.mod"
    install -m 0644 "$tmp/libckpt_fortran.a" "$lib/libckpt_fortran.a"
    fortran=1
else
    say "warning: no Fortran compiler ($FC): ckpt.f90 installed as source only; compile it with your application"
fi

subst() {
    sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@LIBDIR@|$LIBDIR|g" \
        -e "s|@INCLUDEDIR@|$INCLUDEDIR|g" -e "s|@VERSION@|$version|g" "$1"
}
subst capi/ckpt.pc.in >"$pc/ckpt.pc.tmp"
mv "$pc/ckpt.pc.tmp" "$pc/ckpt.pc"
chmod 0644 "$pc/ckpt.pc"
if [[ $fortran == 1 ]]; then
    cat >"$pc/ckpt-fortran.pc.tmp" <<EOF
# pkg-config file of libckpt's Fortran module (use ckpt); written by
# scripts/install-capi.sh. ckpt.mod was made by $("$FC" --version | head -n1).
prefix=$PREFIX
libdir=$LIBDIR
includedir=$INCLUDEDIR

Name: ckpt-fortran
Description: libckpt Fortran module (use ckpt) over the C ABI
Version: $version
Requires: ckpt = $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lckpt_fortran
EOF
    mv "$pc/ckpt-fortran.pc.tmp" "$pc/ckpt-fortran.pc"
    chmod 0644 "$pc/ckpt-fortran.pc"
fi

for f in "$LIBDIR/libckpt.so.$version" "$LIBDIR/libckpt.so.$major" "$LIBDIR/libckpt.so" \
    "$LIBDIR/libckpt.a" "$INCLUDEDIR/ckpt.h" "$INCLUDEDIR/ckpt.f90" \
    "$LIBDIR/pkgconfig/ckpt.pc"; do
    say "  $DESTDIR$f"
done
if [[ $fortran == 1 ]]; then
    for f in "$INCLUDEDIR/ckpt.mod" "$LIBDIR/libckpt_fortran.a" "$LIBDIR/pkgconfig/ckpt-fortran.pc"; do
        say "  $DESTDIR$f"
    done
fi
say "done: libckpt $version"
say "build: cc app.c \$(pkg-config --cflags --libs ckpt)"
[[ $fortran == 1 ]] && say "       gfortran app.f90 \$(pkg-config --cflags --libs ckpt-fortran)"
loader_dirs() {
    printf '%s\n' /lib /usr/lib /lib64 /usr/lib64
    cat /etc/ld.so.conf /etc/ld.so.conf.d/*.conf 2>/dev/null | grep '^/' || true
}
if [[ -z $DESTDIR && $(id -u) == 0 ]] && loader_dirs | grep -qx "$LIBDIR"; then
    # A directory the loader already searches: refresh its cache.
    ldconfig
else
    say "run:   the loader must find $LIBDIR: LD_LIBRARY_PATH=$LIBDIR, -Wl,-rpath,$LIBDIR, or ldconfig"
fi
if ! command -v pkg-config >/dev/null; then
    say "note: pkg-config is not installed here; the flags are -I$INCLUDEDIR -L$LIBDIR -lckpt"
elif [[ -z $DESTDIR ]]; then
    case ":${PKG_CONFIG_PATH:-}:" in
    *":$LIBDIR/pkgconfig:"*) ;;
    *) pkg-config --variable=pc_path pkg-config 2>/dev/null | tr ':' '\n' | grep -qx "$LIBDIR/pkgconfig" ||
        say "note: pkg-config does not search $LIBDIR/pkgconfig: export PKG_CONFIG_PATH=$LIBDIR/pkgconfig" ;;
    esac
fi
