#!/usr/bin/env bash
# Makes Redis answer on 127.0.0.1:6379 (the rate limiter's shared windows; idempotent).
#
# Installs Debian's redis-server when absent and, unless something already answers PING
# there, starts it as this machine kind does: no persistence, logging to
# /var/log/redis/ci.log (ONRAMP_REDIS_PORT, ONRAMP_REDIS_LOG override both). Prints the
# Redis URL as its last line.
set -euo pipefail

PORT="${ONRAMP_REDIS_PORT:-6379}"
LOG="${ONRAMP_REDIS_LOG:-/var/log/redis/ci.log}"

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "ensure-redis: need root to apt-get install redis-server" >&2
        exit 1
    fi
    echo "ensure-redis: apt-get install redis-server" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends redis-server >&2
fi

answers() {
    [[ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" == "PONG" ]]
}

if ! answers; then
    echo "ensure-redis: starting redis-server on 127.0.0.1:$PORT (log $LOG)" >&2
    mkdir -p /var/lib/redis "$(dirname "$LOG")"
    # From /, with its own --dir: the server outlives this run and its caller's directory.
    (cd / && redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$PORT" \
        --save "" --appendonly no --dir /var/lib/redis --logfile "$LOG")
    for _ in $(seq 1 50); do
        answers && break
        sleep 0.2
    done
    if ! answers; then
        echo "ensure-redis: Redis did not answer on 127.0.0.1:$PORT; see $LOG" >&2
        exit 1
    fi
fi
echo "redis://127.0.0.1:$PORT/0"
