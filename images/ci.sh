#!/usr/bin/env bash
# CI's image stage (scripts/test.sh all): builds the image twice from the same
# inputs and SOURCE_DATE_EPOCH and fails unless rootfs.tar.zst, initrd.img,
# Image and disk.img are byte-identical; verifies the manifest (and that a changed artifact fails
# verification); then boots the image under qemu-system-aarch64 and drives
# it over the API (tests/tests/image_boot.rs). The agent is the debug
# aarch64 build the "aarch64 build" stage made (--profile debug).
#
#   images/ci.sh [--profile release|debug]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
[ "${1:-}" = --profile ] && profile=${2:?--profile needs release or debug}
bash images/setup.sh
out=$(pwd)/${CARGO_TARGET_DIR:-target}/dpu-image
case "${CARGO_TARGET_DIR:-}" in /*) out=$CARGO_TARGET_DIR/dpu-image ;; esac
rm -rf "$out"
start=$(date +%s)
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
for n in 1 2; do
    t=$(date +%s)
    bash images/build.sh --out "$out/build$n" --profile "$profile"
    echo "images/ci.sh: build $n took $(( $(date +%s) - t )) s"
done

status=0
printf '\n%-16s %-64s %s\n' artifact "sha256 (build 1)" "build 2"
for f in rootfs.tar.zst initrd.img Image disk.img; do
    a=$(sha256sum "$out/build1/$f" | cut -d' ' -f1)
    b=$(sha256sum "$out/build2/$f" | cut -d' ' -f1)
    printf '%-16s %-64s %s\n' "$f" "$a" "$([ "$a" = "$b" ] && echo same || echo "DIFFERS $b")"
    if [ "$a" != "$b" ]; then
        echo "images/ci.sh: FAIL two builds gave different $f" >&2
        status=1
    fi
done
[ "$status" = 0 ] || exit 1

bash images/verify.sh "$out/build1"
# A changed artifact must fail verification.
tampered=$out/tampered
cp -r --sparse=always "$out/build1" "$tampered"
printf '#' >> "$tampered/bf.cfg.template"
if bash images/verify.sh "$tampered" >/dev/null 2>&1; then
    echo "images/ci.sh: FAIL verify.sh accepted a changed bf.cfg.template" >&2
    exit 1
fi
echo "images/ci.sh: verify.sh rejects a changed artifact"
rm -rf "$tampered" "$out/build2"

# --workspace: the features of the workspace tests, whose build this reuses.
DPU_IMAGE_DIR="$out/build1" bash scripts/must-run-tests.sh \
    cargo test --locked --workspace --test image_boot -- --ignored --nocapture
echo "images/ci.sh: image stage took $(( $(date +%s) - start )) s"
