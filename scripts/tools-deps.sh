#!/usr/bin/env bash
# Tool servers and npm packages used by the tests; each step is idempotent and cached.
set -euo pipefail
cd "$(dirname "$0")/.."
for script in scripts/tools/ensure-*.sh; do
  [ -f "$script" ] && bash "$script"
done
for dir in tests/browser bench; do
  if [ -f "$dir/package-lock.json" ] && [ ! -d "$dir/node_modules" ]; then
    (cd "$dir" && npm ci --silent --no-audit --no-fund)
  fi
done
