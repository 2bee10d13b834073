#!/usr/bin/env bash
# Installs what images/build.sh and the image boot test need and is
# missing, on Debian 12 (root): mmdebstrap, qemu-system-arm (from
# bookworm-backports when the host's QEMU comes from there, so the shared
# qemu-system-common matches), qemu-utils, zstd, e2fsprogs, cpio, kmod,
# openssl, the Debian archive keyring. The aarch64 toolchain and
# qemu-user-static come from cross/setup.sh. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

want=(mmdebstrap qemu-utils zstd e2fsprogs cpio kmod openssl debian-archive-keyring
    binutils-aarch64-linux-gnu git)
missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
need_qemu=0
command -v qemu-system-aarch64 >/dev/null 2>&1 || need_qemu=1
if [ ${#missing[@]} -gt 0 ] || [ "$need_qemu" = 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "images/setup.sh: run as root to install ${missing[*]} qemu-system-arm" >&2; exit 1; }
    apt-get update -qq
    if [ ${#missing[@]} -gt 0 ]; then
        echo "images/setup.sh: installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if [ "$need_qemu" = 1 ]; then
        release=()
        common=$(dpkg-query -W -f='${Version}' qemu-system-common 2>/dev/null || true)
        case "$common" in *bpo*) release=(-t bookworm-backports) ;; esac
        echo "images/setup.sh: installing qemu-system-arm ${release[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${release[@]}" qemu-system-arm >/dev/null
    fi
fi
echo "images/setup.sh: ready ($(qemu-system-aarch64 --version | head -1), mmdebstrap $(mmdebstrap --version | awk '{print $2}'))"
