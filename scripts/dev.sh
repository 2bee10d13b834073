#!/usr/bin/env bash
# The first command for a newcomer: installs prerequisites, builds the agent,
# runs `dpu-agent dev` on its embedded defaults (PKI and a private Open vSwitch
# in the state directory), applies the demo tenant and shows it. Ctrl-C stops
# the agent and its Open vSwitch (the switch outlives a crashed or restarted
# agent; `dpu-agent dev --stop` is what stops it).
#
#   scripts/dev.sh                 state in ~/.local/state/dpu-agent/dev
#   DPU_STATE_DIR=/tmp/x scripts/dev.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
command -v cargo >/dev/null || { echo "dev: cargo not found; install Rust with rustup" >&2; exit 1; }
cargo build --locked -q -p dpu-agent -p dpuctl --bins

state="${DPU_STATE_DIR:-$HOME/.local/state/dpu-agent/dev}"
export DPU_STATE_DIR="$state"
mkdir -p "$state"
bin="${CARGO_TARGET_DIR:-target}/debug"
agent="$bin/dpu-agent"
dpuctl="$bin/dpuctl"

"$agent" dev --state-dir "$state" 2>"$state/agent.log" &
pid=$!
# On Ctrl-C the agent has usually exited already (it got the SIGINT too), so
# `kill` fails: nothing in the clean-up may stop it under `set -e`, or the
# switch would be left running.
stop() {
  set +e
  # A second signal (Ctrl-C reaches the whole process group, a supervisor
  # may repeat SIGTERM) must not cut the clean-up short.
  trap '' INT TERM
  kill "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  "$agent" dev --stop --state-dir "$state" >/dev/null 2>&1
}
trap stop EXIT
trap 'exit 130' INT TERM

for _ in $(seq 1 100); do
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "dev: dpu-agent exited; its log:" >&2
    cat "$state/agent.log" >&2
    exit 1
  fi
  "$dpuctl" get tenants >/dev/null 2>&1 && break
  sleep 0.2
done

echo "== dpuctl apply -f examples/demo-tenant.yaml"
"$dpuctl" apply -f examples/demo-tenant.yaml
sleep 1
for kind in tenants networks functions ports; do
  echo "== dpuctl get $kind"
  "$dpuctl" get "$kind"
done
cat <<TXT

The agent is running (log: $state/agent.log). In another shell:
    export DPU_STATE_DIR=$state PATH=$(cd "$bin" && pwd):\$PATH
    dpuctl get ports; dpuctl describe ports demo-web; dpuctl watch
Ctrl-C stops it.
TXT
wait "$pid"
