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
# Each stage line also says how much disk is left: a fresh CI machine has
# less than a developer's, and running out is a failure like any other.
stage() {
  printf '\n=== %s (%ss, %s free, target/ %s)\n' "$1" "$(( $(date +%s) - t0 ))" \
    "$(df -h --output=avail . | tail -1 | tr -d ' ')" \
    "$(du -sh target 2>/dev/null | cut -f1 || echo 0)"
}

stage "format"
cargo fmt --all -- --check
stage "clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
cargo clippy -p dpu-agent --no-default-features --all-targets --locked -- -D warnings  # the agent as the image builds it (no `dev`)
RUSTDOCFLAGS='-D warnings' cargo doc --workspace --no-deps --all-features --locked  # intra-doc links resolve
if [ "$mode" = all ]; then
  # The advisory database needs a network this project's machines lack.
  stage "cargo deny (licenses, bans, sources)"
  cargo deny check licenses bans sources
fi
stage "workspace tests"
# Built once, then run in two lanes at once: the three longest test binaries
# (the API surface against real agent processes) in one, every other test
# target and the doc tests in the other. They wait on agents, Open vSwitch
# and fsync more than they compute, so the second lane uses the idle core.
cargo test --workspace --locked --no-run
long=(agent_api api_conformance crash_points)
mapfile -t others < <(cargo metadata --format-version 1 --no-deps --locked |
  python3 -c '
import json, sys
long = set(sys.argv[1:])
names = {t["name"] for p in json.load(sys.stdin)["packages"]
         for t in p["targets"] if t["kind"] == ["test"]}
print("\n".join(sorted(names - long)))' "${long[@]}")
as_tests() { for t in "$@"; do printf -- '--test\n%s\n' "$t"; done; }
lane() {
  local name=$1
  shift
  "$@" 2>&1 | sed -u "s/^/[$name] /"
}
mapfile -t long_args < <(as_tests "${long[@]}")
mapfile -t other_args < <(as_tests "${others[@]}")
lane tests-a cargo test --workspace --locked "${long_args[@]}" &
lane_a=$!
{ lane tests-b cargo test --workspace --locked --lib --bins "${other_args[@]}" &&
  lane tests-b cargo test --workspace --locked --doc; } &
lane_b=$!
failed=0
wait "$lane_a" || failed=1
wait "$lane_b" || failed=1
[ "$failed" = 0 ] || { echo "workspace tests: a lane failed (lines prefixed [tests-a] / [tests-b] above)" >&2; exit 1; }
stage "alert rules (promtool check rules, promtool test rules)"
promtool check rules deploy/prometheus/dpu-agent.rules.yml
promtool test rules deploy/prometheus/tests/*.test.yml
[ "$mode" = all ] || exit 0

stage "fuzz smoke (every decoder's target, 10 s each)"
bash fuzz/smoke.sh
# The fuzz workspace's build is used by nothing after this stage.
[ "${CI:-}" = true ] && rm -rf fuzz/target/*/release fuzz/target/release

stage "aarch64 build"
bash cross/build.sh
# The glibc build only proves the agent links there; nothing later uses it.
[ "${CI:-}" = true ] && rm -rf target/aarch64-unknown-linux-gnu
stage "aarch64 unit tests under qemu-user"
bash cross/test.sh
stage "VM tests (QEMU, Debian kernel)"
bash tests/vm/run.sh
stage "arm64 image (build twice, verify, boot under qemu-system-aarch64)"
bash images/ci.sh
stage "done"
