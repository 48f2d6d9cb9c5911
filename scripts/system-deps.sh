#!/usr/bin/env bash
# Debian packages and local services the test suite needs; idempotent and quiet when done.
set -euo pipefail

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
[ -x /bin/busybox ] || need+=(busybox-static)
command -v psql >/dev/null || need+=(postgresql-client)
# The chaos tests run private clusters: they need the server binaries, not only psql.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# PostgreSQL: this machine kind starts it before every session; start it if it stopped.
if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  cluster=$(ls /etc/postgresql 2>/dev/null | head -1)
  if [ -n "$cluster" ]; then
    (cd / && pg_ctlcluster --skip-systemctl-redirect "$cluster" main start) || true
  fi
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432 -q || { echo "PostgreSQL is not reachable on 127.0.0.1:5432"; exit 1; }

# Redis: the rate limiter's shared windows (tests/security/test_rate_limits.py).
bash "$(dirname "$0")/tools/ensure-redis.sh" >/dev/null
