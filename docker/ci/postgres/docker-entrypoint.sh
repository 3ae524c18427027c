#!/usr/bin/env bash
# CI-only stand-in for the official postgres image's entrypoint (see Dockerfile): the same
# variables and first-start behaviour, much less code.
set -Eeuo pipefail

# `docker run postgres -c x=y` means the server with those options.
if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi

if [ "$1" = postgres ] && [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA"
    chown postgres:postgres "$PGDATA"
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ "$1" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
        echo 'error: the database is uninitialized and POSTGRES_PASSWORD is not set' >&2
        exit 1
    fi
    user=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$user}
    echo "stand-in postgres: initdb (PostgreSQL $(postgres --version | awk '{print $NF}'), user $user, database $db)"
    # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of options, as upstream
    initdb --username="$user" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
        -D "$PGDATA" ${POSTGRES_INITDB_ARGS:-} >/dev/null
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    echo "host all all all ${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >>"$PGDATA/pg_hba.conf"
    # A temporary server on the socket only: nothing outside sees it before it is ready.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start >/dev/null
    export PGUSER=$user PGHOST=/var/run/postgresql
    if [ "$db" != postgres ]; then
        psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "create database \"$db\""
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        [ -e "$f" ] || continue
        # *.sh: sourced unless executable, as upstream.
        # shellcheck disable=SC1090
        case "$f" in
            *.sh) echo "running $f"; if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
            *.sql) echo "running $f"; psql -X -q -v ON_ERROR_STOP=1 -d "$db" -f "$f" ;;
            *.sql.gz) echo "running $f"; gunzip -c "$f" | psql -X -q -v ON_ERROR_STOP=1 -d "$db" ;;
            *) echo "ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    unset PGUSER PGHOST
    echo 'stand-in postgres: init done'
fi

exec "$@"
