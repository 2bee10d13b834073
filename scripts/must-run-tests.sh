#!/usr/bin/env bash
# Runs a `cargo test` command line and fails when it ran no test at all: a CI
# stage meant to run VM, image or root tests that ran none of them (every
# test filtered out, ignored, or its binary missing) is not green.
#
#   scripts/must-run-tests.sh cargo test -p dpu-tests --test vm_smoke -- --ignored
set -euo pipefail
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$@" 2>&1 | tee "$log"
# "test result: ok. 3 passed; 0 failed; 1 ignored; ..."
ran=$(awk '/^test result:/ { n += $4 + $6 } END { print n + 0 }' "$log")
if [ "$ran" -eq 0 ]; then
    echo "must-run-tests: no test ran for: $*" >&2
    exit 1
fi
echo "must-run-tests: $ran test(s) ran"
