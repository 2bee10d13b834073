#!/usr/bin/env bash
# Installs what the VM rig (dpu_tests::vm) needs on a Debian 12 host. Idempotent:
# run it as often as you like; it only changes what is missing.
#   - QEMU >= 8 from bookworm-backports (bookworm's 7.2 has no `igb` SR-IOV NIC)
#   - apt, dpkg-deb, depmod (kmod), cpio, busybox-static for building the initramfs
#   - the static musl target for the probe binaries copied into the guest
#   - netdevsim.ko for the guest kernel (tests/vm/netdevsim.sh; cached)
set -euo pipefail

need_root() { [ "$(id -u)" = 0 ] || { echo "setup.sh: run as root (installs packages)" >&2; exit 1; }; }

BACKPORTS=/etc/apt/sources.list.d/backports.list
qemu_ok() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || return 1
    local major
    major=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')
    [ "${major:-0}" -ge 8 ] && qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"'
}

missing=()
for tool in cpio:cpio depmod:kmod dpkg-deb:dpkg apt-get:apt; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || missing+=("${tool##*:}")
done
[ -x /bin/busybox ] && dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)

updated=0
if [ ${#missing[@]} -gt 0 ] || ! qemu_ok; then
    need_root
    if ! grep -qs 'bookworm-backports' "$BACKPORTS" /etc/apt/sources.list /etc/apt/sources.list.d/*.sources 2>/dev/null; then
        echo 'deb http://deb.debian.org/debian bookworm-backports main' > "$BACKPORTS"
    fi
    apt-get update -qq
    updated=1
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    if ! qemu_ok; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -t bookworm-backports qemu-system-x86
    fi
fi

# The harness resolves package versions with apt-cache: make sure lists exist.
if [ "$updated" = 0 ] && ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    need_root
    apt-get update -qq
fi

if command -v rustup >/dev/null 2>&1; then
    rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
        || rustup target add x86_64-unknown-linux-musl
fi

qemu_ok || { echo "setup.sh: qemu-system-x86_64 >= 8 with igb still missing" >&2; exit 1; }
# Debian's kernels do not build netdevsim: the eswitch VM test needs it.
bash "$(dirname "$0")/netdevsim.sh"
echo "VM rig ready: $(qemu-system-x86_64 --version | head -1)"
