#!/usr/bin/env bash
# Installs the Debian packages the tests and the local demo run for real (Prometheus, promtool,
# Alertmanager, amtool, node_exporter) and the npm packages used to validate dashboards, when
# they are missing. Idempotent; quiet when everything is there. With --runtime (``make demo``),
# only what the demo runs: the npm packages are for the tests alone.
set -euo pipefail
cd "$(dirname "$0")/.."
runtime_only=false
[ "${1:-}" = "--runtime" ] && runtime_only=true

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
command -v prometheus-node-exporter >/dev/null || need_apt+=(prometheus-node-exporter)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if $runtime_only; then exit 0; fi
# --- npm packages for dashboard validation (tests/schema) ---
# Grafana's own dashboard types (pinned in tests/schema/package-lock.json), turned into a JSON
# Schema by tests/schema/generate.sh. Re-installed only when the lock file changes.
schema_dir=tests/schema
schema_stamp="$schema_dir/node_modules/.installed-$(cksum <"$schema_dir/package-lock.json" | cut -d' ' -f1)"
if [ ! -f "$schema_stamp" ]; then
  if ! command -v npm >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    echo "installing Debian packages: nodejs npm"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  echo "installing npm packages in $schema_dir"
  (cd "$schema_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  rm -f "$schema_dir"/node_modules/.installed-*
  touch "$schema_stamp"
fi
