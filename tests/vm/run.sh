#!/usr/bin/env bash
# CI's VM stage: prepares the host (tests/vm/setup.sh), builds the static
# probe binaries copied into guests, then runs the VM tests one at a time
# (each boots Debian's kernel under QEMU TCG; ~10-40 s per boot on 2 cores).
# Extra arguments go to the test binaries, e.g. `tests/vm/run.sh igb`.
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
# The VM tests are #[ignore]d in plain `cargo test` (reported as ignored);
# here they run, and a run in which none ran fails.
DPU_VM_TESTS=1 bash scripts/must-run-tests.sh cargo test --locked -p dpu-tests --test vm_smoke \
    --test vm_harness --test functions_vm --test eswitch_vm --test crypto_vm --test storage_vm --test rdma_vm --test bluefield_vm \
    -- --ignored --test-threads=1 "$@"
DPU_VM_TESTS=1 bash scripts/must-run-tests.sh cargo test --locked -p host-stub --test vm \
    -- --ignored --test-threads=1 "$@"
echo "VM stage took $(( $(date +%s) - start )) s"
