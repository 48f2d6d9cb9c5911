#!/usr/bin/env bash
# Installs JupyterLab in its own cached virtualenv for process workspaces (idempotent).
#
# ${ONRAMP_TOOLS_CACHE:-$HOME/.cache/onramp}/jupyter-venv holds the install; every student's
# server runs from it with its own HOME, config, runtime and working directories (see
# core/tools/process_workspace.py). Prints the `jupyter` binary as its last line.
set -euo pipefail

CACHE="${ONRAMP_TOOLS_CACHE:-$HOME/.cache/onramp}"
VENV="$CACHE/jupyter-venv"
PY="${PYTHON:-python3}"
PINS=(jupyterlab==4.6.6)
PINS_ID="jupyterlab-4.6.6"

mkdir -p "$CACHE"
exec 9>"$CACHE/jupyter.lock"
flock 9

if [[ ! -f "$VENV/.installed-$PINS_ID" ]]; then
    echo "ensure-jupyter: installing ${PINS[*]} into $VENV" >&2
    [[ -x "$VENV/bin/pip" ]] || "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --upgrade pip >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}" >&2
    touch "$VENV/.installed-$PINS_ID"
fi
echo "ensure-jupyter: ready ($("$VENV/bin/jupyter" lab --version))" >&2
echo "$VENV/bin/jupyter"
