#!/usr/bin/env bash
# Installs what building, running and testing this project needs on a fresh
# Debian 12 machine (root): Open vSwitch and iproute2 for the agent and its
# tests; the aarch64 cross toolchain, the QEMU VM rig and the image build
# (images/setup.sh) with --all.
# Idempotent: installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want=(openvswitch-switch iproute2 iputils-ping ethtool strace prometheus)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The distribution's OVS service would fight the private sandboxes; it is
# never used.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet openvswitch-switch 2>/dev/null; then
  systemctl stop openvswitch-switch || true
fi
# Only promtool of the prometheus package is used (alert rules and /metrics
# lint); its server is not.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi

# From PyPI, for the workspace tests: schemathesis fuzzes the served OpenAPI
# document (tests/tests/api_conformance.rs); openapi-python-client generates
# a client from it (tests/tests/generated_client.rs).
pypi=()
python3 -m schemathesis.cli --version 2>/dev/null | grep -q "4.32.5" || pypi+=("schemathesis==4.32.5")
python3 -m openapi_python_client --version 2>/dev/null | grep -q "0.29.1" || pypi+=("openapi-python-client==0.29.1")
if [ ${#pypi[@]} -gt 0 ]; then
  echo "setup: installing ${pypi[*]} (PyPI)"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  python3 -m pip install --quiet --disable-pip-version-check "${pypi[@]}" 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${pypi[@]}"
fi

if [ "${1:-}" = "--all" ]; then
  # Licenses, bans and sources of the dependency tree (scripts/test.sh).
  if ! command -v cargo-deny >/dev/null 2>&1; then
    # --debug: builds in 2 minutes instead of 4.7 on 2 cores; its checks
    # here still take ~3 s.
    echo "setup: installing cargo-deny 0.20.2 (crates.io, debug build)"
    cargo install --debug --locked --quiet cargo-deny --version 0.20.2
  fi
  bash cross/setup.sh
  bash tests/vm/setup.sh
  bash images/setup.sh
fi
