#!/usr/bin/env bash
# Builds the arm64 DPU image into DIR (see images/README.md):
#
#   images/build.sh --out DIR [--profile release|debug] [--signing-key KEY]
#
#   DIR/Image             Debian's arm64 kernel (uncompressed, boots with -kernel)
#   DIR/initrd.img        busybox initramfs: loads virtio/ext4, switches into the root
#   DIR/rootfs.tar.zst    the root filesystem (reproducible: same inputs and
#                         SOURCE_DATE_EPOCH give the same bytes)
#   DIR/disk.img          raw ext4 disk of that root filesystem (label dpu-root)
#   DIR/bf.cfg.template   BlueField bf.cfg; images/provision.sh renders it per DPU
#   DIR/manifest.json     sha256 of every artifact, Debian packages, Rust SBOM
#   DIR/manifest.json.sig Ed25519 signature of manifest.json (64 raw bytes)
#   DIR/manifest.pub.pem  the public key it verifies with (images/verify.sh DIR)
#
# The root boots systemd (Debian's systemd, systemd-sysv, udev) with the
# units in images/rootfs/etc/systemd; see README "What boots".
#
# Inputs: Debian bookworm arm64 packages (mmdebstrap, cached under
# .cache/images), the static aarch64 dpu-agent (without its `dev` feature)
# and dpuctl (built here with cargo for aarch64-unknown-linux-musl, a no-op
# when up to date), the files under images/rootfs and images/initramfs.
# Needs root (device nodes, ownership) and images/setup.sh's packages.
#
# SOURCE_DATE_EPOCH defaults to the commit time of HEAD. The signing key is
# --signing-key, else $DPU_IMAGE_SIGNING_KEY, else a dev key generated once
# into .cache/images/dev-signing-key.pk8 (never for shipping; see README).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

out=""
profile=release
signing_key=${DPU_IMAGE_SIGNING_KEY:-}
suite=bookworm
mirror=${DPU_IMAGE_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DPU_IMAGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=${2:?--out needs a directory}; shift 2 ;;
        --profile) profile=${2:?--profile needs release or debug}; shift 2 ;;
        --signing-key) signing_key=${2:?--signing-key needs a file}; shift 2 ;;
        -h|--help) usage ;;
        *) echo "images/build.sh: unknown argument $1" >&2; usage ;;
    esac
done
[ -n "$out" ] || usage
case "$profile" in release|debug) ;; *) echo "images/build.sh: --profile must be release or debug" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "images/build.sh: run as root (the root filesystem has device nodes and owners)" >&2; exit 1; }
for tool in mmdebstrap mkfs.ext4 zstd cpio qemu-aarch64-static depmod modprobe aarch64-linux-gnu-strip systemd-sysusers; do
    command -v "$tool" >/dev/null || { echo "images/build.sh: $tool missing: run images/setup.sh" >&2; exit 1; }
done

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
export TZ=UTC LC_ALL=C
umask 022
t0=$(date +%s)
step() { printf 'images/build.sh: [%3ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

cache=${DPU_IMAGE_CACHE:-$repo/.cache/images}
mkdir -p "$cache/debs" "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/var/tmp}/dpu-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root

# --- the agent -------------------------------------------------------------
target=aarch64-unknown-linux-musl
step "building dpu-agent and dpuctl for $target ($profile)"
cargo_profile=()
[ "$profile" = release ] && cargo_profile=(--release)
# Without SOURCE_DATE_EPOCH: build scripts (ring's cc) rerun when it changes,
# which would rebuild the agent that the aarch64 stage already built.
# Without the agent's default `dev` feature: no `dpu-agent dev`, dev PKI
# writer or private Open vSwitch in the image (`run` is all of production;
# see README "What the image leaves out"). The same flags as cross/build.sh,
# whose build this reuses.
env -u SOURCE_DATE_EPOCH cargo build --locked -q "${cargo_profile[@]}" --target "$target" \
    -p dpu-agent -p dpuctl --bins --no-default-features
env -u SOURCE_DATE_EPOCH cargo build --locked -q -p dpu-image
bindir=${CARGO_TARGET_DIR:-$repo/target}/$target/$profile
for b in dpu-agent dpuctl; do
    [ -x "$bindir/$b" ] || { echo "images/build.sh: $bindir/$b was not built" >&2; exit 1; }
done

# --- Debian root filesystem ---------------------------------------------------
# extract: unpack the packages, run none of their scripts (no arm64 emulation
# of maintainer scripts needed); the fixups below do what those scripts would.
# The extract hook records exactly the packages unpacked, with versions.
packages=openvswitch-switch,openvswitch-common,systemd,systemd-sysv,udev,busybox-static,ca-certificates
step "root filesystem: mmdebstrap $suite arm64 ($packages)"
mmdebstrap --quiet --architectures=arm64 --variant=extract --include="$packages" \
    --skip=cleanup/apt/cache,essential/unlink \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
    --setup-hook="sync-in '$cache/debs' /var/cache/apt/archives/" \
    --extract-hook='for d in $MMDEBSTRAP_ESSENTIAL; do dpkg-deb -W --showformat="\${Package}\t\${Version}\t\${Architecture}\t\${Source}\n" "$1/$d"; done > "$1/../packages.tsv"' \
    --customize-hook="sync-out /var/cache/apt/archives '$cache/debs'" \
    --customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
    "$suite" "$root" \
    "deb $mirror $suite main" "deb $security_mirror $suite-security main"
# Keep the download cache to the packages of this build.
(cd "$cache/debs" && for f in *.deb; do
    [ -e "$f" ] || continue
    grep -qF "$(dpkg-deb -W --showformat='${Package}\t${Version}\t' "$f")" "$work/packages.tsv" || rm -f "$f"
done)

step "fixups: busybox applets, users, systemd, OVS paths, image files"
# Documentation, man pages and translations: nothing on a DPU reads them.
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man "$root"/usr/share/info \
    "$root"/usr/share/locale "$root"/usr/share/lintian "$root"/var/cache/apt/*.bin \
    "$root"/var/log/apt "$root"/var/lib/apt/lists/* "$root"/etc/apt/sources.list
# The maintainer scripts that did not run would have made these.
ln -sf ../lib/openvswitch-switch/ovs-vswitchd "$root/usr/sbin/ovs-vswitchd"
# busybox provides every command the packages did not (sh, ip, tar, grep...);
# init, mount, reboot... are systemd's and util-linux's.
for applet in $(qemu-aarch64-static "$root/bin/busybox" --list-full); do
    [ -e "$root/$applet" ] || [ -L "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
rm -rf "$root/var/run"
ln -s /run "$root/var/run"
mkdir -p "$root"/{proc,sys,run,tmp,mnt} "$root"/var/{log/openvswitch,lib/dpu-agent} \
    "$root"/etc/{openvswitch,dpu-agent/pki}
chmod 1777 "$root/tmp"
chmod 0700 "$root/etc/dpu-agent/pki" "$root/var/lib/dpu-agent"
cp -a images/rootfs/. "$root/"
# Modes from git (755 or 644), not from the checkout's umask; times from
# SOURCE_DATE_EPOCH, not from when the tree was checked out.
(cd images/rootfs && find .) | while read -r p; do
    if [ ! -L "images/rootfs/$p" ]; then
        if [ -d "images/rootfs/$p" ] || [ -x "images/rootfs/$p" ]; then m=0755; else m=0644; fi
        chmod "$m" "$root/$p"
    fi
    touch --no-dereference --date="@$SOURCE_DATE_EPOCH" "$root/$p"
done
chown -h -R 0:0 "$root/etc/systemd" "$root/usr/lib/dpu-image"
# The agent configs a provisioning file's profile selects (provision apply).
cp images/rootfs/etc/dpu-agent/config.toml "$root/etc/dpu-agent/config.generic.toml"
cp dpu-agent/config.bluefield.toml "$root/etc/dpu-agent/config.bluefield.toml"
chmod 0644 "$root"/etc/dpu-agent/config.{generic,bluefield}.toml
# What systemd's and udev's maintainer scripts would have done: the system
# users and groups of sysusers.d (systemd-network, systemd-journal, the
# device groups udev's rules name), allocated deterministically from the
# root's own sysusers.d; an empty machine-id (systemd makes one at first
# boot and commits it); units are enabled by the symlinks in rootfs/ (and
# default.target -> multi-user.target there).
systemd-sysusers --root="$root" >/dev/null 2>&1
rm -f "$root"/etc/passwd- "$root"/etc/group- "$root"/etc/shadow- "$root"/etc/gshadow-
chmod 0644 "$root"/etc/passwd "$root"/etc/group
chmod 0640 "$root"/etc/shadow "$root"/etc/gshadow
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# udev's hardware database is built by its maintainer script; nothing here
# needs it (no USB/PCI naming beyond the kernel's).
git_commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
cat > "$root/etc/dpu-image-release" <<EOF
NAME=dpu-image
VERSION=$version
GIT_COMMIT=$git_commit
SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH
DEBIAN_SUITE=$suite
EOF

# The agent: static, debug info stripped (deterministic).
for b in dpu-agent dpuctl; do
    aarch64-linux-gnu-strip --strip-debug -o "$root/usr/bin/$b" "$bindir/$b"
    chmod 0755 "$root/usr/bin/$b"
done

# --- kernel and modules -------------------------------------------------------
# A private arm64 apt state in the cache: touches no host apt configuration.
apt_dir=$cache/apt
mkdir -p "$apt_dir"/{lists/partial,archives/partial,etc/none}
: > "$apt_dir/status"
cat > "$apt_dir/etc/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $security_mirror $suite-security main
EOF
apt_opts=(-q -o APT::Architecture=arm64 -o APT::Architectures=arm64
    -o Dir::State::Lists="$apt_dir/lists" -o Dir::State::status="$apt_dir/status"
    -o Dir::Cache="$apt_dir" -o Dir::Cache::Archives="$apt_dir/archives"
    -o Dir::Etc::SourceList="$apt_dir/etc/sources.list" -o Dir::Etc::SourceParts="$apt_dir/etc/none"
    -o Dir::Etc::Preferences="$apt_dir/etc/none/p" -o Dir::Etc::PreferencesParts="$apt_dir/etc/none"
    -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update >/dev/null
kpkg=$(apt-cache "${apt_opts[@]}" depends linux-image-arm64 | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || { echo "images/build.sh: apt has no linux-image-arm64 for arm64" >&2; exit 1; }
kver_pkg=$(apt-cache "${apt_opts[@]}" show "$kpkg" | awk '/^Version:/{print $2; exit}')
kdeb=$(ls "$apt_dir/archives/${kpkg}_${kver_pkg//:/%3a}_arm64.deb" 2>/dev/null || true)
if [ -z "$kdeb" ]; then
    step "downloading $kpkg $kver_pkg"
    rm -f "$apt_dir/archives/${kpkg}_"*.deb
    apt-get "${apt_opts[@]}" install --download-only --no-install-recommends -y "$kpkg" >/dev/null
    kdeb=$(ls "$apt_dir/archives/${kpkg}_${kver_pkg//:/%3a}_arm64.deb")
fi
kver=${kpkg#linux-image-}
step "kernel $kpkg $kver_pkg"
printf '%s\t%s\t%s\t%s\n' "$kpkg" "$kver_pkg" arm64 linux-signed-arm64 >> "$work/packages.tsv"
kdir=$work/kernel
mkdir -p "$kdir"
dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$kdir" ./boot ./lib
depmod -b "$kdir" "$kver"
modules_of() { # the insmod order of modules $@ and their dependencies
    for m in "$@"; do modprobe -d "$kdir" -S "$kver" --show-depends "$m"; done |
        awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++'
}
# Root disk: loaded by the initramfs. The rest: by systemd-modules-load and udev.
initrd_modules=$(modules_of virtio_pci virtio_blk ext4)
root_modules=$(modules_of virtio_pci virtio_blk ext4 virtio_net virtio_rng tun veth xfrm_user esp4 esp4_offload)
for f in $root_modules; do
    rel=${f#"$kdir"/}
    mkdir -p "$root/$(dirname "$rel")"
    cp "$f" "$root/$rel"
done
cp "$kdir/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kver/"
depmod -b "$root" "$kver"
cp "$kdir/boot/vmlinuz-$kver" "$out/Image"

# --- reproducible tarball -------------------------------------------------------
step "normalizing timestamps and writing rootfs.tar.zst"
find "$root" -newermt "@$SOURCE_DATE_EPOCH" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
tar_opts=(--sort=name --format=posix --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime)
tar "${tar_opts[@]}" -C "$root" -cf - . | zstd -q -T1 -12 -o "$out/rootfs.tar.zst" -f
mv "$work/packages.tsv" "$work/packages.unsorted" && sort "$work/packages.unsorted" > "$work/packages.tsv"

# --- initramfs -----------------------------------------------------------------
step "initramfs"
ird=$work/initramfs
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$root/bin/busybox" "$ird/bin/busybox"
cp images/initramfs/init "$ird/init"
chmod 0755 "$ird/init"
: > "$ird/lib/modules/load-order"
for f in $initrd_modules; do
    cp "$f" "$ird/lib/modules/"
    basename "$f" >> "$ird/lib/modules/load-order"
done
find "$ird" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
(cd "$ird" && find . | sort | cpio --quiet --reproducible -o -H newc -R 0:0) | gzip -9 -n > "$out/initrd.img"

# --- disk image ----------------------------------------------------------------
# ext4 with label, UUID, hash seed and times fixed by the inputs.
step "disk.img (ext4, 1 GiB sparse)"
uuid=$(sha256sum "$out/rootfs.tar.zst" | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/')
rm -f "$out/disk.img"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -L dpu-root -U "$uuid" \
    -E "hash_seed=$uuid,lazy_itable_init=0,lazy_journal_init=0" -d "$root" "$out/disk.img" 1G
# mke2fs copies each file's atime and ctime from the build tree (the time of
# this build's extraction): set them to SOURCE_DATE_EPOCH too.
(cd "$root" && find . -mindepth 1 | sed 's|^\.||') |
    awk -v t="@$SOURCE_DATE_EPOCH" 'BEGIN { printf "sif / atime %s\nsif / ctime %s\n", t, t }
        { printf "sif \"%s\" atime %s\nsif \"%s\" ctime %s\n", $0, t, $0, t }' > "$work/debugfs.cmds"
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$work/debugfs.cmds" "$out/disk.img" > "$work/debugfs.log" 2>&1 ||
    { cat "$work/debugfs.log" >&2; echo "images/build.sh: debugfs could not set inode times" >&2; exit 1; }

cp images/bf.cfg.template "$out/bf.cfg.template"

# --- manifest and signature ----------------------------------------------------
step "manifest and signature"
sign=()
if [ -n "$signing_key" ]; then
    sign=(--signing-key "$signing_key")
else
    sign=(--dev-signing-key "$cache/dev-signing-key.pk8")
fi
"${CARGO_TARGET_DIR:-$repo/target}/debug/dpu-image" manifest --dir "$out" \
    --debian-packages "$work/packages.tsv" --kernel "$kver" --agent-target "$target" \
    --agent-profile "$profile" --debian-suite "$suite" --source-date-epoch "$SOURCE_DATE_EPOCH" "${sign[@]}"

step "done: $out"
ls -l "$out"
echo "rootfs.tar.zst sha256 $(sha256sum "$out/rootfs.tar.zst" | cut -d' ' -f1)"
