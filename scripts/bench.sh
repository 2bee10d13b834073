#!/usr/bin/env bash
# Every benchmark of the project, one after another, and one table of their
# rows at the end: target, measured, baseline measured in the same run, the
# ratio to it, met / missed. Benchmarks are not tests: CI does not run this,
# and nothing here fails on a missed target.
#
#   scripts/bench.sh              API, flows and ports, the pipeline's cost
#                                 of one port added at 1k, 3k and 10k ports,
#                                 one port added and restart through the
#                                 agent, TLS proxy vs stunnel4, host-stub
#                                 scan and RSS
#   scripts/bench.sh --storage    also the storage benchmark in the VM rig
#   scripts/bench.sh --vm-net [PORTS]  also one port added and restart
#                                 through the agent on the kernel datapath,
#                                 in the VM rig (TCG guest; default 1000 ports)
#   scripts/bench.sh --quick      shorter runs (fewer ports, seconds, rounds)
#   scripts/bench.sh --only agent-bench,scan   only the benchmarks named
#                                 (agent-bench, net_bench, pipeline_bench,
#                                 net-agent-bench, tls_bench, scan,
#                                 storage_bench, vm-net-bench)
#
# Needs root (OVS sandboxes, network namespaces) and what scripts/setup.sh
# installs, plus stunnel4 and valgrind (installed here if missing). Each
# benchmark's own output is kept in target/bench/<name>.txt, the table in
# target/bench/summary.md.
#
# The rows come from `bench-row` lines each benchmark prints after its own
# table: tab-separated `bench-row, row, measured, baseline, ratio, target,
# met|missed|-` ("-" where there is no baseline or target).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

storage=false
vm_net=""
quick=false
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --storage) storage=true ;;
    --vm-net)
      vm_net=1000
      if [[ ${2:-} =~ ^[0-9]+$ ]]; then vm_net=$2; shift; fi ;;
    --quick) quick=true ;;
    --only) only=",${2:?--only needs a list of benchmark names},"; shift ;;
    *) echo "usage: scripts/bench.sh [--storage] [--vm-net [PORTS]] [--quick] [--only NAME,...]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "scripts/bench.sh: needs root (OVS sandboxes, namespaces)" >&2; exit 2; }
command -v stunnel4 >/dev/null || apt-get install -y -qq stunnel4 >/dev/null
command -v valgrind >/dev/null || apt-get install -y -qq valgrind >/dev/null

out=target/bench
mkdir -p "$out"
summary=$out/summary.md
: > "$out/rows.tsv"

if $quick; then
  agent_args=(--connections 32 --seconds 3)
  net_agent_args=(--ports 300 --runs 20 --baseline-runs 5)
  vm_net_args=(--runs 10 --baseline-runs 5)
  export TLS_BENCH_ROUNDS=1
else
  agent_args=(--connections 32 --seconds 10)
  net_agent_args=(--ports 3000 --rules 27 --runs 50 --baseline-runs 20)  # ≥ 100k flows
  vm_net_args=(--runs 20 --baseline-runs 10)  # a TCG guest: fewer runs
fi

echo "scripts/bench.sh: building release binaries"
cargo build --locked --release -q -p dpu-agent -p dpu-tests --bin dpu-agent \
  --bin agent-bench --bin net-agent-bench
# The host stub as shipped (Cargo.toml's release-small profile).
cargo build --locked --profile release-small -q -p host-stub --bin host-stub

# run NAME AREA COMMAND...: runs one benchmark, keeps its output, collects
# its rows under AREA; a benchmark that fails leaves a row saying so.
run() {
  local name=$1 area=$2
  shift 2
  if [ -n "$only" ] && [[ $only != *",$name,"* ]]; then
    return 0
  fi
  echo "scripts/bench.sh: $name: $*"
  local started=$SECONDS
  if "$@" > "$out/$name.txt" 2> "$out/$name.err"; then
    local rows
    rows=$(grep -P '^bench-row\t' "$out/$name.txt" || true)
    if [ -z "$rows" ]; then
      printf '%s\t%s\t-\t-\t-\t-\tno rows printed\tsee %s\n' "$area" "$name" "$out/$name.txt" >> "$out/rows.tsv"
    else
      printf '%s\n' "$rows" | cut -f2- | sed "s/^/$area\t/" | sed 's/$/\t/' >> "$out/rows.tsv"
    fi
  else
    printf '%s\t%s\t-\t-\t-\t-\tfailed\t%s\n' "$area" "$name" "exit $?, see $out/$name.err" >> "$out/rows.tsv"
  fi
  echo "scripts/bench.sh: $name took $((SECONDS - started)) s"
}

run agent-bench "API (agent-bench)" target/release/agent-bench "${agent_args[@]}"
run net_bench "switch: flows and ports (net_bench)" \
  cargo bench --locked -q -p net-offload --bench net_bench
pipeline_args=(--instructions)
$quick && pipeline_args+=(--quick)
run pipeline_bench "switch pipeline, in-process (pipeline_bench)" \
  cargo bench --locked -q -p net-offload --bench pipeline_bench -- "${pipeline_args[@]}"
run net-agent-bench "switch through the agent (net-agent-bench)" \
  target/release/net-agent-bench "${net_agent_args[@]}"
run tls_bench "TLS proxy (tls_bench)" cargo bench --locked -q -p dpu-crypto --bench tls_bench
run scan "host stub (scan)" env HOST_STUB_BIN="$PWD/target/release-small/host-stub" \
  cargo bench --locked -q -p host-stub --bench scan
if $storage || [[ $only == *",storage_bench,"* ]]; then
  bash tests/vm/setup.sh > "$out/vm-setup.txt" 2>&1
  CC_x86_64_unknown_linux_musl=gcc cargo build --locked -q -p dpu-tests \
    --target x86_64-unknown-linux-musl --bin storage-bench
  run storage_bench "storage (VM rig)" \
    cargo bench --locked -q --profile dev -p dpu-tests --bench storage_bench
fi
if [ -n "$vm_net" ] || [[ $only == *",vm-net-bench,"* ]]; then
  bash tests/vm/setup.sh > "$out/vm-setup.txt" 2>&1
  # Static release builds for the guest (the agent's speed is measured).
  CC_x86_64_unknown_linux_musl=gcc cargo build --locked --release -q \
    --target x86_64-unknown-linux-musl -p dpu-tests --bin net-agent-bench -p dpu-agent --bin dpu-agent
  cargo build --locked --release -q -p dpu-tests --bin vm-net-bench
  run vm-net-bench "switch through the agent, kernel datapath (VM rig, TCG)" \
    target/release/vm-net-bench --ports "${vm_net:-1000}" "${vm_net_args[@]}"
fi

{
  echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (modified)');" \
    "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo
  echo "| area | row | measured | baseline (same run) | ratio | target | |"
  echo "|---|---|---|---|---|---|---|"
  while IFS=$'\t' read -r area row measured baseline ratio target verdict note; do
    case "$verdict" in
      met) v=met ;;
      missed) v="**missed**" ;;
      failed|"no rows printed") v="**$verdict** ($note)" ;;
      *) v="" ;;
    esac
    echo "| $area | $row | $measured | $baseline | $ratio | $target | $v |"
  done < "$out/rows.tsv"
} > "$summary"
echo
cat "$summary"
