#!/usr/bin/env bash
# Makes a Docker Engine API available through Podman on this machine (idempotent).
#
# Installs podman + runc (crun fails on this machine kind) and busybox-static, writes
# /etc/containers/containers.conf when absent, builds the tests' tiny workspace image
# ($ONRAMP_TEST_IMAGE, a static busybox httpd; no registry is reachable here) and starts
# `podman system service` on $ONRAMP_PODMAN_SOCKET. A service that answers but cannot
# start a container (e.g. started from a directory deleted since: conmon then fails with
# "Failed to get working directory") is restarted. Prints the socket URL (unix://...) as
# its last line.
set -euo pipefail

SOCKET="${ONRAMP_PODMAN_SOCKET:-/run/podman-onramp.sock}"
LOG="${ONRAMP_PODMAN_LOG:-/tmp/podman-onramp.log}"
IMAGE="${ONRAMP_TEST_IMAGE:-localhost/onramp-test-workspace:1}"
IMAGE_PORT="${ONRAMP_TEST_IMAGE_PORT:-8080}"

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

# Two test sessions starting at once must not both restart the service.
exec 9>"$SOCKET.lock"
flock 9

if ! podman image exists "$IMAGE"; then
    echo "ensure-podman: building $IMAGE from /bin/busybox" >&2
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    mkdir -p "$build"/rootfs/{bin,www,tmp,data}
    cp -p /bin/busybox "$build/rootfs/bin/busybox"
    ln -s busybox "$build/rootfs/bin/sh"
    echo "onramp test workspace" >"$build/rootfs/www/index.html"
    tar -C "$build/rootfs" -cf "$build/rootfs.tar" .
    podman import --change \
        "CMD [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"$IMAGE_PORT\", \"-h\", \"/www\"]" \
        "$build/rootfs.tar" "$IMAGE" >/dev/null
fi

answers() {
    curl -fsS --max-time 2 --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1
}

# What the tests need: a container actually starts through the socket.
runs_a_container() {
    timeout 60 podman --url "unix://$SOCKET" run --rm --network none "$IMAGE" \
        /bin/busybox true >/dev/null 2>&1
}

# The service on $SOCKET, found by its exact command line (it may have been started by an
# earlier run, or by the older version of this script).
service_pids() {
    local proc cmdline want="podman system service --time=0 unix://$SOCKET"
    for proc in /proc/[0-9]*; do
        cmdline=$({ tr '\0' ' ' <"$proc/cmdline"; } 2>/dev/null) || continue
        [[ "${cmdline% }" == "$want" ]] && echo "${proc#/proc/}"
    done
    return 0
}

stop_service() {
    local pid pids
    pids=$(service_pids)
    [[ -z "$pids" ]] && return
    echo "ensure-podman: stopping the service on $SOCKET (pid" $pids")" >&2
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        [[ -z "$(service_pids)" ]] && return
        sleep 0.2
    done
    for pid in $(service_pids); do kill -9 "$pid" 2>/dev/null || true; done
}

start_service() {
    rm -f "$SOCKET"
    echo "ensure-podman: starting podman system service on $SOCKET (log $LOG)" >&2
    # From /, not the caller's directory: the service outlives this run, and conmon cannot
    # start containers once the service's working directory (a deleted clone) is gone.
    # 9>&-: the service must not hold this script's lock for its lifetime.
    (cd / && exec setsid nohup podman system service --time=0 "unix://$SOCKET" \
        >"$LOG" 2>&1 </dev/null 9>&-) &
    for _ in $(seq 1 100); do
        answers && return 0
        sleep 0.2
    done
    echo "ensure-podman: the service did not answer on $SOCKET; see $LOG" >&2
    exit 1
}

if ! runs_a_container; then
    if answers; then
        echo "ensure-podman: the service on $SOCKET answers but cannot start a container;" \
            "restarting it" >&2
    fi
    stop_service # a hung or broken one; none when the socket was never served
    start_service
    if ! runs_a_container; then
        echo "ensure-podman: no container starts through $SOCKET; see $LOG" >&2
        exit 1
    fi
fi
echo "unix://$SOCKET"
