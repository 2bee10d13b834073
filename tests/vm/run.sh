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
cargo build -p dpu-tests --release --target x86_64-unknown-linux-musl --bin ktls-probe
cargo build -p dpu-tests --release --target x86_64-unknown-linux-musl --bin vf-config
cargo build -p dpu-tests --release --target x86_64-unknown-linux-musl --bin xfrm-probe
cargo build -p dpu-tests --release --target x86_64-unknown-linux-musl --bin nvmet-probe
DPU_VM_TESTS=1 cargo test -p dpu-tests --test vm_smoke --test vm_harness --test functions_vm --test crypto_vm --test storage_vm -- --test-threads=1 "$@"
echo "VM stage took $(( $(date +%s) - start )) s"
