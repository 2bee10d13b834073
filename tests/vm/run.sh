#!/usr/bin/env bash
# CI's VM stage: prepares the host (tests/vm/setup.sh), builds the static
# probe binaries copied into guests, then runs the VM tests in two lanes at
# once. Each guest is one vCPU under QEMU TCG (~10-40 s per boot), so one
# lane keeps one of the two cores busy; inside a lane the tests run one at a
# time. The package cache the guests are built from is safe to share between
# processes (downloads and unpacked trees are published by rename).
# Extra arguments go to the test binaries, e.g. `tests/vm/run.sh igb`; a run
# with a filter is one lane, so the filter need only match one test.
#
#   DPU_VM_LANES=1 tests/vm/run.sh    one lane: every VM test in turn
set -euo pipefail
cd "$(dirname "$0")/../.."

bash tests/vm/setup.sh

start=$(date +%s)
# ring (rustls, via dpu-agent and dpu-crypto) has C code: without a musl cross
# gcc, the host gcc builds it for the static musl target.
export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-gcc}"
# Debug profile: the probes only need to run, and it shares nothing with the
# release profile, so building them in release would build everything twice.
cargo build --locked -p dpu-tests --target x86_64-unknown-linux-musl \
    --bin ktls-probe --bin vf-config --bin xfrm-probe --bin nvmet-probe --bin eswitch-probe \
    -p dpu-agent --bin dpu-agent -p dpuctl --bin dpuctl

# Two lanes of about equal length, in seconds per test binary.
# Measured with both lanes running (2026-12-07): A 209 202 100 19 20,
# B 221 155 132 72; alone each took 0.6-0.9 of that.
lane_a=(crypto_vm rdma_vm vm_harness eswitch_vm functions_vm)
lane_b=(storage_vm vm bluefield_vm vm_smoke)
# With a filter, one lane: it need only match a test somewhere.
lanes="${DPU_VM_LANES:-$([ "$#" -gt 0 ] && echo 1 || echo 2)}"
if [ "$lanes" = 1 ]; then
    lane_a+=("${lane_b[@]}")
    lane_b=()
fi
targets() { for t in "$@"; do printf -- '--test\n%s\n' "$t"; done; }

# --workspace: the same features as the workspace tests, so the test
# binaries built there are reused. Built once here, before the lanes start.
mapfile -t all < <(targets "${lane_a[@]}" "${lane_b[@]}")
cargo test --locked --workspace --no-run "${all[@]}"

# The VM tests are #[ignore]d in plain `cargo test` (reported as ignored);
# here they run, and a lane in which none ran fails.
run_lane() {
    local name=$1
    shift
    local args
    mapfile -t args < <(targets "$@")
    DPU_VM_TESTS=1 bash scripts/must-run-tests.sh cargo test --locked --workspace "${args[@]}" \
        -- --ignored --test-threads=1 "${extra[@]}" 2>&1 | sed -u "s/^/[$name] /"
}
extra=("$@")
run_lane vm-a "${lane_a[@]}" &
pid_a=$!
pid_b=
if [ "${#lane_b[@]}" -gt 0 ]; then
    run_lane vm-b "${lane_b[@]}" &
    pid_b=$!
fi
status=0
wait "$pid_a" || status=1
[ -z "$pid_b" ] || wait "$pid_b" || status=1
echo "VM stage took $(( $(date +%s) - start )) s"
exit "$status"
