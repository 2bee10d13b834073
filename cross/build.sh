#!/usr/bin/env bash
# Builds dpu-agent and dpuctl for aarch64 (musl, static; and glibc), prints the
# binaries and their sizes, and checks that the musl dpu-agent is statically
# linked and prints its version under qemu-user. Exits non-zero on any failure.
#
#   cross/build.sh            debug build
#   cross/build.sh --release  release build (what ships on the DPU)
#
# Run cross/setup.sh first on a fresh machine. Honors CARGO_TARGET_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."

profile=debug
cargo_profile=()
case "${1:-}" in
    --release) profile=release; cargo_profile=(--release) ;;
    "") ;;
    *) echo "usage: cross/build.sh [--release]" >&2; exit 2 ;;
esac

TARGETS=(aarch64-unknown-linux-musl aarch64-unknown-linux-gnu)
BINS=(dpu-agent dpuctl)
target_dir=${CARGO_TARGET_DIR:-target}

for t in "${TARGETS[@]}"; do
    echo "cross/build.sh: building ${BINS[*]} for $t ($profile)"
    cargo build --locked "${cargo_profile[@]}" --target "$t" -p dpu-agent -p dpuctl --bins
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

agent="$target_dir/aarch64-unknown-linux-musl/$profile/dpu-agent"
desc=$(file -b "$agent")
echo "file: $desc"
if [[ $desc != *"ARM aarch64"* ]] || [[ $desc != *"statically linked"* && $desc != *"static-pie linked"* ]]; then
    echo "cross/build.sh: $agent is not a statically linked aarch64 executable" >&2
    exit 1
fi

# qemu-user exits 1 without a word for a missing path, so the file check above
# comes first. The musl binary needs no -L sysroot.
if ! version=$(qemu-aarch64-static "$agent" --version); then
    echo "cross/build.sh: $agent --version failed under qemu-aarch64-static" >&2
    exit 1
fi
want="dpu-agent $(cargo metadata --no-deps --format-version 1 --locked |
    sed -n 's/.*"name":"dpu-agent","version":"\([^"]*\)".*/\1/p')"
echo "qemu-aarch64-static: $version"
if [[ $version != "$want"* ]]; then
    echo "cross/build.sh: expected version output starting with '$want'" >&2
    exit 1
fi

gnu="$target_dir/aarch64-unknown-linux-gnu/$profile/dpu-agent"
if ! qemu-aarch64-static -L /usr/aarch64-linux-gnu "$gnu" --version >/dev/null; then
    echo "cross/build.sh: $gnu --version failed under qemu-aarch64-static" >&2
    exit 1
fi
echo "cross/build.sh: ok"
