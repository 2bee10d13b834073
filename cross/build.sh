#!/usr/bin/env bash
# Builds dpu-agent and dpuctl for aarch64 (musl, static; and glibc), prints the
# binaries and their sizes, and checks that the musl dpu-agent is statically
# linked and prints its version under qemu-user. Exits non-zero on any failure.
#
#   cross/build.sh            debug build
#   cross/build.sh --release  release build (what ships on the DPU), then the
#                             size check below
#   cross/build.sh --sizes    only the size check: the static aarch64 binaries
#                             that ship, dpu-agent (release) and host-stub
#                             (profile release-small), each checked static and
#                             run with --version under qemu-user, their sizes
#                             against the targets (dpu-agent <= 20 MB,
#                             host-stub <= 8 MB; MB = 10^6 bytes); a missed
#                             target fails the script after the table
#
# Run cross/setup.sh first on a fresh machine. Honors CARGO_TARGET_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."

profile=debug
cargo_profile=()
sizes=false
case "${1:-}" in
    --release) profile=release; cargo_profile=(--release); sizes=true ;;
    --sizes) profile=release; cargo_profile=(--release); sizes=true ;;
    "") ;;
    *) echo "usage: cross/build.sh [--release | --sizes]" >&2; exit 2 ;;
esac
mode=${1:-}

TARGETS=(aarch64-unknown-linux-musl aarch64-unknown-linux-gnu)
BINS=(dpu-agent dpuctl)
# The agent as it ships: without the `dev` feature (dev mode, its PKI writer
# and private Open vSwitch; dpu-agent/README.md "Features"), as
# images/build.sh builds it, so that the image reuses this build.
SHIP_FEATURES=(--no-default-features)
target_dir=${CARGO_TARGET_DIR:-target}

musl=aarch64-unknown-linux-musl
workspace_version=$(cargo metadata --no-deps --format-version 1 --locked |
    sed -n 's/.*"name":"dpu-agent","version":"\([^"]*\)".*/\1/p')

# Fails unless $1 is a statically linked aarch64 executable that prints
# "$2 <workspace version>" for --version under qemu-user.
check_static() {
    local bin=$1 name=$2 desc version
    desc=$(file -b "$bin")
    echo "file: $desc"
    if [[ $desc != *"ARM aarch64"* ]] || [[ $desc != *"statically linked"* && $desc != *"static-pie linked"* ]]; then
        echo "cross/build.sh: $bin is not a statically linked aarch64 executable" >&2
        exit 1
    fi
    # qemu-user exits 1 without a word for a missing path, so the file check
    # above comes first. The musl binary needs no -L sysroot.
    if ! version=$(qemu-aarch64-static "$bin" --version); then
        echo "cross/build.sh: $bin --version failed under qemu-aarch64-static" >&2
        exit 1
    fi
    echo "qemu-aarch64-static: $version"
    if [[ $version != "$name $workspace_version"* ]]; then
        echo "cross/build.sh: expected version output starting with '$name $workspace_version'" >&2
        exit 1
    fi
}

if [[ $mode != --sizes ]]; then
    for t in "${TARGETS[@]}"; do
        echo "cross/build.sh: building ${BINS[*]} for $t ($profile)"
        cargo build --locked "${cargo_profile[@]}" --target "$t" -p dpu-agent -p dpuctl --bins "${SHIP_FEATURES[@]}"
    done

    echo
    printf '%-60s %12s\n' binary bytes
    for t in "${TARGETS[@]}"; do
        for b in "${BINS[@]}"; do
            f="$target_dir/$t/$profile/$b"
            [[ -f $f ]] || { echo "cross/build.sh: $f was not built" >&2; exit 1; }
            printf '%-60s %12s  (%s)\n' "$f" "$(stat -c %s "$f")" "$(du -h "$f" | cut -f1)"
        done
    done
    echo

    check_static "$target_dir/$musl/$profile/dpu-agent" dpu-agent

    gnu="$target_dir/aarch64-unknown-linux-gnu/$profile/dpu-agent"
    if ! qemu-aarch64-static -L /usr/aarch64-linux-gnu "$gnu" --version >/dev/null; then
        echo "cross/build.sh: $gnu --version failed under qemu-aarch64-static" >&2
        exit 1
    fi
fi

if $sizes; then
    # The host stub ships to hosts, not the DPU, but as one static file too;
    # its own size-tuned profile (Cargo.toml, host-stub/README.md "Size").
    echo "cross/build.sh: building host-stub for $musl (release-small)"
    cargo build --locked --profile release-small --target "$musl" -p host-stub --bin host-stub
    if [[ $mode == --sizes ]]; then
        echo "cross/build.sh: building dpu-agent for $musl (release)"
        cargo build --locked --release --target "$musl" -p dpu-agent --bin dpu-agent "${SHIP_FEATURES[@]}"
        check_static "$target_dir/$musl/release/dpu-agent" dpu-agent
    fi
    check_static "$target_dir/$musl/release-small/host-stub" host-stub

    echo
    printf '%-60s %12s %9s %9s  %s\n' "static aarch64 binary" bytes MB target result
    missed=0
    size_line() { # path limit_bytes
        local bytes result
        bytes=$(stat -c %s "$1")
        if ((bytes <= $2)); then result=met; else result=MISSED; missed=1; fi
        printf '%-60s %12s %9s %9s  %s\n' "$1" "$bytes" \
            "$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1e6 }')" \
            "<= $(($2 / 1000000))" "$result"
    }
    size_line "$target_dir/$musl/release/dpu-agent" 20000000
    size_line "$target_dir/$musl/release-small/host-stub" 8000000
    if ((missed)); then
        echo "cross/build.sh: a static aarch64 binary is over its size target" >&2
        exit 1
    fi
fi
echo "cross/build.sh: ok"
