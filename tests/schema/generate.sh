#!/usr/bin/env bash
# Generates JSON Schemas from Grafana's own TypeScript types (@grafana/schema, pinned in
# package.json) into DIR (default: this directory): dashboard.schema.json, the Dashboard type that
# every dashboards/*.json must validate against (tests/test_dashboards.py).
# Needs `npm ci` here first (scripts/install-os-deps.sh does it). Takes a few seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "${1:-$here}" && cd "${1:-$here}" && pwd)"
cd "$here"
gen=node_modules/.bin/ts-json-schema-generator
if [ ! -x "$gen" ]; then
  echo "ts-json-schema-generator is not installed: run 'npm ci' in $here (or scripts/install-os-deps.sh)" >&2
  exit 2
fi
"$gen" --path node_modules/@grafana/schema/dist/esm/raw/dashboard/x/dashboard_types.gen.d.ts \
  --type Dashboard --no-type-check --additional-properties -o "$out/dashboard.schema.json"
