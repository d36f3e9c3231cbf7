#!/usr/bin/env bash
# A throwaway PostgreSQL server for the multi-worker tests (tests/reliability/).
#
#   .ci/postgres.sh start   install Debian's postgresql if missing, start a private cluster
#                           on 127.0.0.1 only, create the database, print its URL on stdout
#   .ci/postgres.sh stop    stop the cluster (its files stay in $QUANTUNE_PG_DIR)
#
# The cluster is not Debian's system cluster: it lives in $QUANTUNE_PG_DIR (default
# /tmp/quantune-ci-pg), listens on 127.0.0.1:$QUANTUNE_PG_PORT (default 54329) with its
# socket in that folder, and needs a password (scram-sha-256). Run as root, it runs the
# server as the `postgres` user that the package creates (initdb refuses root).
set -euo pipefail
ACTION="${1:-start}"
PORT="${QUANTUNE_PG_PORT:-54329}"
DIR="${QUANTUNE_PG_DIR:-/tmp/quantune-ci-pg}"
USER_NAME=quantune
PASSWORD=quantune-ci
DB=quantune
DATA="$DIR/data"

log() { echo "postgres.sh: $*" >&2; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

if [ -z "$(pg_bin)" ]; then
  [ "$(id -u)" = 0 ] || { log "postgresql is not installed and this is not root"; exit 1; }
  log "installing Debian's postgresql"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
fi
BIN="$(pg_bin)"

as_owner() {  # run a server command as the owner of the cluster
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

if [ "$ACTION" = stop ]; then
  [ -f "$DATA/PG_VERSION" ] && as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >&2 || true
  exit 0
fi

mkdir -p "$DIR"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$DIR"
if [ ! -f "$DATA/PG_VERSION" ]; then
  pwfile="$DIR/pw"
  as_owner bash -c "umask 077 && echo '$PASSWORD' > '$pwfile'"
  as_owner "$BIN/initdb" -D "$DATA" -U "$USER_NAME" --pwfile="$pwfile" \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 >"$DIR/initdb.log"
  rm -f "$pwfile"
fi
if ! as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
  as_owner "$BIN/pg_ctl" -D "$DATA" -l "$DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c max_connections=100" start >&2
fi
export PGPASSWORD="$PASSWORD"
if ! "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U "$USER_NAME" -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
  "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U "$USER_NAME" "$DB" >&2
fi
echo "postgresql://$USER_NAME:$PASSWORD@127.0.0.1:$PORT/$DB"
