#!/usr/bin/env bash
# The second command for a newcomer, and what CI runs: installs what the tests
# need, then checks formatting and lints, runs every test of the workspace
# (real agent processes, private Open vSwitch sandboxes, network namespaces;
# with `all`, cargo deny checks licenses, bans and sources first),
# builds and unit-tests the aarch64 agent under qemu-user, runs the QEMU
# VM tests for kernel paths this machine lacks, and builds and boots the arm64
# DPU image (images/ci.sh).
#
#   scripts/test.sh          everything (as CI)
#   scripts/test.sh quick    format, lints and the workspace tests only
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

mode="${1:-all}"
case "$mode" in
  all) bash scripts/setup.sh --all ;;
  quick) bash scripts/setup.sh ;;
  *) echo "usage: scripts/test.sh [all|quick]" >&2; exit 2 ;;
esac

t0=$(date +%s)
stage() { printf '\n=== %s (%ss)\n' "$1" "$(( $(date +%s) - t0 ))"; }

stage "format"
cargo fmt --all -- --check
stage "clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
if [ "$mode" = all ]; then
  # The advisory database needs a network this project's machines lack.
  stage "cargo deny (licenses, bans, sources)"
  cargo deny check licenses bans sources
fi
stage "workspace tests"
cargo test --workspace --locked
stage "alert rules (promtool check rules, promtool test rules)"
promtool check rules deploy/prometheus/dpu-agent.rules.yml
promtool test rules deploy/prometheus/tests/*.test.yml
[ "$mode" = all ] || exit 0

stage "fuzz smoke (every decoder's target, 10 s each)"
bash fuzz/smoke.sh

stage "aarch64 build"
bash cross/build.sh
stage "aarch64 unit tests under qemu-user"
bash cross/test.sh
stage "VM tests (QEMU, Debian kernel)"
bash tests/vm/run.sh
stage "arm64 image (build twice, verify, boot under qemu-system-aarch64)"
bash images/ci.sh
stage "done"
