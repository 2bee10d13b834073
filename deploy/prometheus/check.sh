#!/usr/bin/env bash
# Checks what deploy/prometheus ships and what the agent exports:
#   1. promtool check rules   dpu-agent.rules.yml (syntax, templates)
#   2. promtool test rules    tests/*.test.yml (each alert fires when it should, not before)
#   3. promtool check metrics on the /metrics text of a live `dpu-agent dev --no-ovs`
#      after a scripted workload (the Rust test tests/tests/metrics.rs, which also
#      asserts the families move as expected), and on the host stub's own
#      /metrics (host-stub/tests/daemon.rs).
# promtool comes from Debian's `prometheus` package (do not start its service).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v promtool >/dev/null; then
  echo "promtool not found: apt-get install -y prometheus (the service need not run)" >&2
  exit 1
fi
echo "=== promtool check rules"
promtool check rules deploy/prometheus/dpu-agent.rules.yml
echo "=== promtool test rules"
promtool test rules deploy/prometheus/tests/*.test.yml
echo "=== promtool check metrics on a live dev agent (tests/tests/metrics.rs)"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
cargo test -p dpu-tests --locked --test metrics
echo "=== promtool check metrics on the host stub's /metrics (host-stub/tests/daemon.rs)"
cargo test -p host-stub --locked --test daemon metrics_
