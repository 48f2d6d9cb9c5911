#!/bin/sh
# Superset's metadata schema, the admin the worker logs in as, roles; then the server.
set -eu
superset db upgrade
superset fab create-admin --username "$SUPERSET_ADMIN_USERNAME" --firstname Onramp \
  --lastname Admin --email "$SUPERSET_ADMIN_EMAIL" --password "$SUPERSET_ADMIN_PASSWORD" \
  || echo "admin exists"
superset init
exec gunicorn --bind 0.0.0.0:8088 --workers 2 --timeout 120 "superset.app:create_app()"
