#!/bin/sh
# Run by the postgres image on its first start: Grafana's read-only role (grafana-reader.psql),
# over the tables of the schema's owner (05-roles.sh).
set -eu
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "${POSTGRES_DB:-$POSTGRES_USER}" \
    -v reader_password="${GRAFANA_READER_PASSWORD:?}" -v owner=pubsub_owner \
    -f "$(dirname "$0")/grafana-reader.psql"
