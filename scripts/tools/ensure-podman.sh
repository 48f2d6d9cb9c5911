#!/usr/bin/env bash
# Makes a Docker Engine API available through Podman on this machine (idempotent).
#
# Installs podman + runc (crun fails on this machine kind) and busybox-static (the tests
# build their tiny workspace image from it), writes /etc/containers/containers.conf when
# absent, and starts `podman system service` on $ONRAMP_PODMAN_SOCKET unless it already
# answers. Prints the socket URL (unix://...) as its last line.
set -euo pipefail

SOCKET="${ONRAMP_PODMAN_SOCKET:-/run/podman-onramp.sock}"
LOG="${ONRAMP_PODMAN_LOG:-/tmp/podman-onramp.log}"

missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || missing+=(runc)
[[ -x /bin/busybox ]] && /bin/busybox httpd --help >/dev/null 2>&1 || missing+=(busybox-static)
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "ensure-podman: need root to apt-get install ${missing[*]}" >&2
        exit 1
    fi
    echo "ensure-podman: apt-get install ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if [[ ! -f /etc/containers/containers.conf ]]; then
    mkdir -p /etc/containers
    cat >/etc/containers/containers.conf <<CONF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
CONF
fi

answers() {
    curl -fsS --max-time 2 --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1
}

if ! answers; then
    rm -f "$SOCKET"
    echo "ensure-podman: starting podman system service on $SOCKET (log $LOG)" >&2
    setsid nohup podman system service --time=0 "unix://$SOCKET" >"$LOG" 2>&1 </dev/null &
    for _ in $(seq 1 100); do
        answers && break
        sleep 0.2
    done
    if ! answers; then
        echo "ensure-podman: the service did not answer on $SOCKET; see $LOG" >&2
        exit 1
    fi
fi
echo "unix://$SOCKET"
