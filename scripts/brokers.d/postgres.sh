# PostgreSQL: Debian's server binaries, a throwaway cluster on 127.0.0.1:15432.
# Sourced by scripts/brokers; see the contract there.
PG_PORT=${OMNIBUS_PG_PORT:-15432}

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

postgres_running() { pid_alive "$1/postgres.pid"; }

postgres_ready() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d omnibus -U postgres; }

postgres_up() {
  local dir=$1 bin
  bin=$(pg_bin) || { apt_install postgresql; bin=$(pg_bin) || die "postgresql server binaries not found after install"; }
  if postgres_running "$dir" && postgres_ready; then
    log "postgres already running on 127.0.0.1:$PG_PORT"
  else
    postgres_down "$dir"
    rm -rf "$dir/data"
    mkdir -p "$dir"
    chown postgres: "$dir"
    log "initdb in $dir/data"
    runuser -u postgres -- "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale --no-sync >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    # Generous limits for tests: many concurrent connections, fast commits.
    cat >>"$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$dir'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 256MB
CONF
    runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >&2 \
      || { tail -20 "$dir/server.log" >&2; die "postgres did not start"; }
    head -1 "$dir/data/postmaster.pid" >"$dir/postgres.pid"
    "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres omnibus 2>/dev/null || true
    wait_for "postgres ready" 60 postgres_ready || die "postgres not ready after 60 s"
    log "postgres ready on 127.0.0.1:$PG_PORT"
  fi
  echo "export OMNIBUS_POSTGRES_URL='postgres://postgres@127.0.0.1:$PG_PORT/omnibus?sslmode=disable'" >"$dir/env"
}

postgres_down() {
  local dir=$1 bin
  if [ -f "$dir/data/postmaster.pid" ] && bin=$(pg_bin) && postgres_running "$dir"; then
    log "stopping postgres"
    runuser -u postgres -- "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || stop_pid "$dir/postgres.pid" postgres
  fi
  rm -f "$dir/postgres.pid"
}
