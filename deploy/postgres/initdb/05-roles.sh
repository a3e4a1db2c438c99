#!/bin/sh
# Run by the postgres image on its first start: the schema's owner and the services' roles
# (roles.psql), with the passwords compose passes in.
set -eu
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "${POSTGRES_DB:-$POSTGRES_USER}" \
    -v owner_password="${PUBSUB_OWNER_PASSWORD:?}" \
    -v app_password="${PUBSUB_APP_PASSWORD:?}" \
    -v reader_password="${PUBSUB_READER_PASSWORD:?}" \
    -f "$(dirname "$0")/roles.psql"
