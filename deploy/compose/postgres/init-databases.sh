#!/bin/sh
# Creates the Temporal and provisioner roles and the provisioner database. The postgres image runs the scripts of
# /docker-entrypoint-initdb.d once, on an empty data directory, as the superuser ($POSTGRES_USER).
#
# Passwords come from Docker secrets (files), never from the compose file. Temporal's role gets CREATEDB because
# temporalio/auto-setup creates its `temporal` and `temporal_visibility` databases itself.
set -eu

secrets_dir="${SECRETS_DIR:-/run/secrets}"
temporal_role="${TEMPORAL_DB_USER:-temporal}"
provisioner_role="${PROVISIONER_DB_USER:-provisioner}"
provisioner_database="${PROVISIONER_DB_NAME:-provisioner}"

psql --set ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    --set temporal_role="$temporal_role" \
    --set temporal_password="$(cat "$secrets_dir/temporal_db_password")" \
    --set provisioner_role="$provisioner_role" \
    --set provisioner_password="$(cat "$secrets_dir/provisioner_db_password")" \
    --set provisioner_database="$provisioner_database" <<'SQL'
CREATE ROLE :"temporal_role" LOGIN CREATEDB PASSWORD :'temporal_password';
CREATE ROLE :"provisioner_role" LOGIN PASSWORD :'provisioner_password';
CREATE DATABASE :"provisioner_database" OWNER :"provisioner_role";
REVOKE ALL ON DATABASE :"provisioner_database" FROM PUBLIC;
SQL
