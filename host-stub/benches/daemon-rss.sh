#!/usr/bin/env bash
# The daemon half of `benches/scan.rs` for any host-stub binary, without
# building the bench (whose dev-dependencies build the whole agent): makes the
# same sysfs tree (one BlueField-3 PF with 256 VFs, each with a netdev and an
# IOMMU group), checks that `discover` finds its 257 functions, runs
# `host-stub run` over it for 5 s (rescan every second, device plugin serving
# in a tempdir, agent address refusing connections) and prints the binary's
# size and the daemon's RSS.
#
#   host-stub/benches/daemon-rss.sh [BINARY]
#
# BINARY defaults to $CARGO_TARGET_DIR (or target)/release-small/host-stub:
#   cargo build --locked --profile release-small -p host-stub --bin host-stub
# The certificates are made with openssl; the daemon only loads them.
set -euo pipefail

cd "$(dirname "$0")/../.."
bin=${1:-${CARGO_TARGET_DIR:-target}/release-small/host-stub}
[[ -x $bin ]] || { echo "daemon-rss.sh: $bin is not an executable; build it first" >&2; exit 1; }
command -v openssl >/dev/null || { echo "daemon-rss.sh: openssl is needed for the certificates" >&2; exit 1; }

VFS=256
work=$(mktemp -d)
pid=
cleanup() {
    if [[ -n $pid ]]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

root=$work/sys
mkdir -p "$root"/{bus/pci/devices,bus/pci/drivers,bus/auxiliary/devices,kernel/iommu_groups,devices/pci0000:00}
: >"$root/bus/pci/drivers_probe"
mkdir -p "$root/bus/pci/drivers/mlx5_core"
for f in bind unbind new_id; do : >"$root/bus/pci/drivers/mlx5_core/$f"; done

# 4 KiB of config space as fixture.rs writes it: vendor 15b3, device, class
# 020000; the PF carries a DSN extended capability at 0x100.
le16() { printf '\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)); }
le32() { printf '\\x%02x\\x%02x\\x%02x\\x%02x' $(($1 & 255)) $(($1 >> 8 & 255)) $(($1 >> 16 & 255)) $(($1 >> 24 & 255)); }
config_space() { # device [dsn_low dsn_high]
    {
        printf "$(le16 0x15b3)$(le16 "$1")"
        head -c 5 /dev/zero
        printf '\x00\x00\x02'
        if (($# == 3)); then
            head -c $((0x100 - 12)) /dev/zero
            printf "$(le32 $((0x0003 | 1 << 16)))$(le32 "$2")$(le32 "$3")"
            head -c $((4096 - 0x10c)) /dev/zero
        else
            head -c $((4096 - 12)) /dev/zero
        fi
    }
}
config_space 0xa2dc 0x55667788 0x11223344 >"$work/pf.config"
config_space 0x101e >"$work/vf.config"

add_function() { # address device iommu_group netdev config
    local a=$1 d=$root/devices/pci0000:00/$1
    mkdir -p "$d/net/$4" "$root/kernel/iommu_groups/$3/devices"
    printf '0x15b3\n' >"$d/vendor"
    printf '0x%s\n' "${2#0x}" >"$d/device"
    printf '0x15b3\n' >"$d/subsystem_vendor"
    printf '0x020000\n' >"$d/class"
    printf '0\n' >"$d/numa_node"
    printf '(null)\n' >"$d/driver_override"
    cp "$5" "$d/config"
    ln -s ../../../bus/pci/drivers/mlx5_core "$d/driver"
    ln -s "../../../kernel/iommu_groups/$3" "$d/iommu_group"
    ln -s "../../../devices/pci0000:00/$a" "$root/bus/pci/devices/$a"
}

pf=0000:03:00.0
add_function $pf a2dc 10 ens1f0np0 "$work/pf.config"
printf '%s\n' $VFS >"$root/devices/pci0000:00/$pf/sriov_totalvfs"
for ((i = 0; i < VFS; i++)); do
    vf=$(printf '0000:%02x:%02x.%d' $((4 + i / 256)) $((i / 8 % 32)) $((i % 8)))
    add_function "$vf" 101e $((100 + i)) "ens1f0v$i" "$work/vf.config"
    ln -s "../$pf" "$root/devices/pci0000:00/$vf/physfn"
    ln -s "../$vf" "$root/devices/pci0000:00/$pf/virtfn$i"
done
printf '%s\n' $VFS >"$root/devices/pci0000:00/$pf/sriov_numvfs"

found=$("$bin" discover --sysfs-root "$root" -o json | grep -c '"pci_address"' || true)
if ((found != VFS + 1)); then
    echo "daemon-rss.sh: discover found $found functions in the tree, expected $((VFS + 1))" >&2
    exit 1
fi
# What a rescan costs in this build (opt-level matters): the median of 21
# whole `discover` processes (scan, select, render; start-up included).
times=()
for ((i = 0; i < 21; i++)); do
    t0=$(date +%s%N)
    "$bin" discover --sysfs-root "$root" -o json >/dev/null
    times+=($((($(date +%s%N) - t0) / 1000)))
done
discover_ms=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 11p | awk '{ printf "%.1f", $1 / 1000 }')

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench-ca -keyout "$work/ca-key.pem" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj /CN=bench -keyout "$work/key.pem" -out "$work/stub.csr" 2>/dev/null
printf 'subjectAltName=URI:spiffe://dpu.local/host-stub/bench\n' >"$work/ext"
openssl x509 -req -in "$work/stub.csr" -CA "$work/ca.pem" -CAkey "$work/ca-key.pem" \
    -CAcreateserial -days 2 -extfile "$work/ext" -out "$work/cert.pem" 2>/dev/null

mkdir -p "$work/plugins"
cat >"$work/stub.toml" <<EOF
rescan_interval_secs = 1
lease_secs = 60
retry_secs = 1
state_dir = "$work/state"
[agent]
url = "https://127.0.0.1:1"
ca = "$work/ca.pem"
cert = "$work/cert.pem"
key = "$work/key.pem"
[cdi]
dir = "$work/cdi"
[device_plugin]
dir = "$work/plugins"
EOF

RUST_LOG=warn "$bin" run --config "$work/stub.toml" --sysfs-root "$root" >/dev/null 2>"$work/stderr" &
pid=$!
sleep 5
status=$(cat "/proc/$pid/status" 2>/dev/null) || {
    echo "daemon-rss.sh: the daemon exited early:" >&2
    cat "$work/stderr" >&2
    exit 1
}
field() { awk -v f="$1:" '$1 == f { print $2 }' <<<"$status"; }
printf '%-40s %10s %10s %12s %9s %9s %9s\n' binary bytes functions discover_ms rss_kib peak_kib anon_kib
printf '%-40s %10s %10s %12s %9s %9s %9s\n' "$bin" "$(stat -c %s "$bin")" "$found" "$discover_ms" \
    "$(field VmRSS)" "$(field VmHWM)" "$(field RssAnon)"
