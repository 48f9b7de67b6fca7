#!/usr/bin/env bash
# Installs what building and testing ckptfs needs on Debian 12, as root.
# Idempotent and quiet when everything is already there, so the README's
# commands can call it every time. CRIU >= 4.2 comes from install-criu.sh
# (Debian 12's own criu is too old for this kernel).
set -euo pipefail

# The last line is the `rdma` feature's: rdma-sys binds libibverbs and
# librdmacm with bindgen, which needs libclang.
PACKAGES=(build-essential pkg-config ca-certificates coreutils util-linux fuse3 attr iproute2 nftables
          gfortran openmpi-bin
          libibverbs-dev librdmacm-dev ibverbs-providers libclang1-14 libclang-common-14-dev)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}" >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "install-deps: need root to install packages (run with sudo)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

bash "$(dirname "${BASH_SOURCE[0]}")/install-criu.sh"
bash "$(dirname "${BASH_SOURCE[0]}")/install-seaweedfs.sh"

if ! command -v cargo >/dev/null 2>&1; then
    for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
        [[ -x $d/cargo ]] && export PATH="$d:$PATH"
    done
fi
if ! command -v cargo >/dev/null 2>&1; then
    cat >&2 <<'MSG'
install-deps: no Rust toolchain found (cargo). ckptfs needs Rust >= 1.89:
  install it with rustup (https://rustup.rs) and run this command again.
MSG
    exit 1
fi
