#!/bin/sh
# Test infrastructure: the part of the official postgres entry point that compose and
# testcontainers rely on. First start: initdb (UTF8), the superuser and its password, the
# database; then postgres listening on every address, as user postgres.
set -eu
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
        echo "POSTGRES_PASSWORD is empty: set it (or POSTGRES_HOST_AUTH_METHOD=trust)" >&2
        exit 1
    fi
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
    initdb -D "$PGDATA" -U "$user" -E UTF8 --locale=C.UTF-8 --auth-local=trust \
        --auth-host="$auth" --pwfile="$pwfile" >/dev/null
    rm -f "$pwfile"
    echo "host all all all $auth" >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$db" != postgres ]; then
        psql -q -U "$user" -d postgres -v ON_ERROR_STOP=1 -v db="$db" <<'SQL'
CREATE DATABASE :"db";
SQL
    fi
    # As the official image: scripts in /docker-entrypoint-initdb.d, in order, against the
    # new database (executable .sh files run, other .sh files are sourced, .sql files piped).
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
            *.sh) if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
            *.sql) psql -q -v ON_ERROR_STOP=1 -U "$user" -d "$db" -f "$f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    echo "stand-in postgres: initialised $PGDATA (UTF8), user $user, database $db"
fi
if [ "$1" = postgres ]; then
    shift
    exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
