#!/bin/sh
# Run once by the postgres image, when its data volume is new: creates the shopfloor
# database, the hub's role and Grafana's read-only role (deploy/postgres/roles.sql),
# with the passwords from the secrets deploy/make-credentials wrote.
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
    -v database=shopfloor \
    -v hub_role=shopfloor \
    -v reader_role=grafana_reader \
    -v hub_password_file=/run/secrets/hub_db_password \
    -v reader_password_file=/run/secrets/grafana_db_password \
    -f /etc/shopfloor/postgres/roles.sql
