#!/usr/bin/env bash
# Installs the Prefect server in its own cached virtualenv (idempotent).
#
# ${ONRAMP_TOOLS_CACHE:-$HOME/.cache/onramp}/prefect-venv holds the install; each server
# started by the tests gets its own PREFECT_HOME, so nothing else needs initialising.
set -euo pipefail

CACHE="${ONRAMP_TOOLS_CACHE:-$HOME/.cache/onramp}"
VENV="$CACHE/prefect-venv"
PY="${PYTHON:-python3}"
PINS=(prefect==3.9.1)
PINS_ID="prefect-3.9.1"

mkdir -p "$CACHE"
exec 9>"$CACHE/prefect.lock"
flock 9

if [[ ! -f "$VENV/.installed-$PINS_ID" ]]; then
    echo "ensure-prefect: installing ${PINS[*]} into $VENV"
    [[ -x "$VENV/bin/pip" ]] || "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"
    touch "$VENV/.installed-$PINS_ID"
fi
echo "ensure-prefect: ready ($VENV)"
