#!/usr/bin/env bash
# Installs what the aarch64 cross build needs and is missing: the GNU aarch64
# cross linker and libc, qemu-user to run the results, and the rustup targets
# pinned in rust-toolchain.toml. Idempotent: a second run installs nothing.
# Needs root (or sudo) only when an apt package is missing.
set -euo pipefail

cd "$(dirname "$0")/.."

APT_PACKAGES=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static file)
TARGETS=(aarch64-unknown-linux-musl aarch64-unknown-linux-gnu)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || {
            echo "cross/setup.sh: need root to install ${missing[*]} (no sudo found)" >&2
            exit 1
        }
        sudo=(sudo)
    fi
    echo "cross/setup.sh: installing ${missing[*]}"
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "cross/setup.sh: apt packages present: ${APT_PACKAGES[*]}"
fi

command -v rustup >/dev/null || {
    echo "cross/setup.sh: rustup not found; install it from https://rustup.rs" >&2
    exit 1
}
# rustup reads rust-toolchain.toml here, so this is the pinned toolchain.
installed=$(rustup target list --installed)
need=()
for t in "${TARGETS[@]}"; do
    grep -qx "$t" <<<"$installed" || need+=("$t")
done
if ((${#need[@]})); then
    echo "cross/setup.sh: adding rustup targets ${need[*]}"
    rustup target add "${need[@]}"
else
    echo "cross/setup.sh: rustup targets present: ${TARGETS[*]}"
fi

# The runners in .cargo/config.toml call these by name.
for tool in aarch64-linux-gnu-gcc qemu-aarch64-static file; do
    command -v "$tool" >/dev/null || {
        echo "cross/setup.sh: $tool is still missing after setup" >&2
        exit 1
    }
done
echo "cross/setup.sh: ready ($(qemu-aarch64-static --version | head -1))"
