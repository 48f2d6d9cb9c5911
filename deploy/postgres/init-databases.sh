#!/bin/bash
# First start of the PostgreSQL volume: one login role and one database per service.
# (Production: a managed PostgreSQL per concern; see the README.)
set -euo pipefail

run() {  # psql reading SQL from stdin, so :'vars' are interpolated and quoted
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres "$@"
}

# Temporal creates its own two databases (temporal, temporal_visibility) at schema setup.
run -v password="$TEMPORAL_DB_PASSWORD" <<'SQL'
CREATE ROLE temporal LOGIN CREATEDB PASSWORD :'password';
SQL

create() {  # role password database [extra role options]
  run -v role="$1" -v password="$2" -v db="$3" <<SQL
CREATE ROLE :"role" LOGIN PASSWORD :'password' ${4:-};
CREATE DATABASE :"db" OWNER :"role";
SQL
}
create onramp "$ONRAMP_DB_PASSWORD" onramp
create superset "$SUPERSET_DB_PASSWORD" superset
create prefect "$PREFECT_DB_PASSWORD" prefect
# The learning database: the worker makes one schema and one login role per student.
create learning_admin "$LEARNING_DB_PASSWORD" learning CREATEROLE
