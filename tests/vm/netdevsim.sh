#!/usr/bin/env bash
# Builds netdevsim.ko for the VM rig's guest kernel (shared/RIG.md §6):
# Debian's kernels do not build netdevsim (CONFIG_NETDEVSIM is not set), so
# it is compiled out of tree from Debian's own linux-source against the
# matching linux-headers. Idempotent and bounded: a cached module is reused;
# otherwise one `apt-get download` (~139 MB), one extraction of
# drivers/net/netdevsim/ only, one `make` of that directory.
#
# Output: $CACHE/netdevsim/<release>/netdevsim.ko, with $CACHE the rig's VM
# cache (`$DPU_VM_CACHE`, else .cache/vm at the workspace root). The guest
# kernel is the one `linux-image-amd64` names (as tests/src/vm/kernel.rs
# picks it); the headers and source must be of that same version, which
# this script checks before building.
set -euo pipefail
cd "$(dirname "$0")/../.."

CACHE="${DPU_VM_CACHE:-$PWD/.cache/vm}"
image=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
[ -n "$image" ] || { echo "netdevsim.sh: apt-cache names no linux-image-*-amd64 for linux-image-amd64 (apt-get update?)" >&2; exit 1; }
release=${image#linux-image-}
out="$CACHE/netdevsim/$release"
ko="$out/netdevsim.ko"
if [ -s "$ko" ]; then
    echo "netdevsim.sh: cached $ko"
    exit 0
fi

version=$(apt-cache show "$image" | sed -n 's/^Version: //p' | head -1)
series=${release%%.0-*}   # 6.1.0-57-amd64 -> 6.1
echo "netdevsim.sh: building netdevsim.ko for $release ($version) from linux-source-$series"

headers="linux-headers-$release"
have=$(dpkg-query -W -f '${Status} ${Version}' "$headers" 2>/dev/null || true)
if [ "$have" != "install ok installed $version" ]; then
    [ "$(id -u)" = 0 ] || { echo "netdevsim.sh: run as root to install $headers" >&2; exit 1; }
    echo "netdevsim.sh: apt-get install $headers=$version"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends "$headers=$version"
fi

work="$CACHE/netdevsim/build-$release"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT
src_deb=$(ls "$CACHE"/netdevsim/linux-source-"$series"_"$version"_*.deb 2>/dev/null | head -1 || true)
if [ -z "$src_deb" ]; then
    echo "netdevsim.sh: apt-get download linux-source-$series=$version (~139 MB)"
    (cd "$work" && timeout 900 apt-get download -qq "linux-source-$series=$version")
    src_deb=$(ls "$work"/linux-source-"$series"_*.deb | head -1)
fi
echo "netdevsim.sh: extracting drivers/net/netdevsim/ from $(basename "$src_deb")"
dpkg-deb --fsys-tarfile "$src_deb" | tar -x -C "$work" "./usr/src/linux-source-$series.tar.xz"
tar -xJf "$work/usr/src/linux-source-$series.tar.xz" -C "$work" "linux-source-$series/drivers/net/netdevsim/"
rm -f "$work/usr/src/linux-source-$series.tar.xz"
mod="$work/linux-source-$series/drivers/net/netdevsim"
echo "netdevsim.sh: make -C /usr/src/$headers M=$mod CONFIG_NETDEVSIM=m modules"
timeout 600 make -s -C "/usr/src/$headers" M="$mod" CONFIG_NETDEVSIM=m -j"${CARGO_BUILD_JOBS:-1}" modules
vermagic=$(modinfo -F vermagic "$mod/netdevsim.ko")
case "$vermagic" in
    "$release "*) ;;
    *) echo "netdevsim.sh: built module's vermagic '$vermagic' is not for $release" >&2; exit 1 ;;
esac
mkdir -p "$out"
cp "$mod/netdevsim.ko" "$ko.tmp"
mv "$ko.tmp" "$ko"
echo "netdevsim.sh: built $ko ($(stat -c %s "$ko") bytes, vermagic $vermagic)"
