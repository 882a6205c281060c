# RabbitMQ cluster: three Debian rabbitmq-server nodes rabbit1@localhost,
# rabbit2@localhost and rabbit3@localhost clustered on loopback, for the
# failover tests. AMQP on 127.0.0.1:22672, 22772 and 22872 (distribution
# one port above each), one epmd shared by the three on 127.0.0.1:22369, the
# CLI's own distribution ports in 22690-22699. Every node runs as the
# rabbitmq user with its files (HOME and the shared cookie, mnesia, logs,
# config, plugins) under DIR/nodeN. Quorum queues get a member on each node.
# Sourced by scripts/brokers; see the contract there.
#
# DIR/env exports OMNIBUS_AMQP_CLUSTER_URLS (the three amqp:// URLs, comma
# separated) and OMNIBUS_AMQP_CLUSTER_CTL, an executable for the tests:
#   "$OMNIBUS_AMQP_CLUSTER_CTL" kill N       SIGKILL node N's Erlang VM (its wrapper exits with it)
#   "$OMNIBUS_AMQP_CLUSTER_CTL" start N      start node N again and wait until the cluster runs 3 nodes
#   "$OMNIBUS_AMQP_CLUSTER_CTL" leader QUEUE print the number (1-3) of the node holding QUEUE's leader
#   "$OMNIBUS_AMQP_CLUSTER_CTL" ctl N ARGS   rabbitmqctl ARGS against node N
RMQC_BIN=/usr/lib/rabbitmq/bin
RMQC_EPMD=22369
RMQC_PLUGINS=rabbitmq_consistent_hash_exchange

rmqc_port() { echo $((22672 + 100 * ($1 - 1))); }

# rmqc_files DIR: write every node's node.env, rabbitmq.conf and plugins
# file, and DIR/ctl.
rmqc_files() {
  local dir=$1 n d port
  for n in 1 2 3; do
    d=$dir/node$n
    port=$(rmqc_port $n)
    mkdir -p "$d"
    cat >"$d/node.env" <<ENV
export RABBITMQ_NODENAME=rabbit$n@localhost
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=$port
export RABBITMQ_DIST_PORT=$((port + 1))
export ERL_EPMD_ADDRESS=127.0.0.1
export ERL_EPMD_PORT=$RMQC_EPMD
export RABBITMQ_CTL_DIST_PORT_MIN=22690
export RABBITMQ_CTL_DIST_PORT_MAX=22699
export HOME=$d/home
export RABBITMQ_MNESIA_BASE=$d/mnesia
export RABBITMQ_LOG_BASE=$d/log
export RABBITMQ_ENABLED_PLUGINS_FILE=$d/plugins
export RABBITMQ_CONFIG_FILE=$d/rabbitmq
export RABBITMQ_PID_FILE=$d/beam.pid
export RABBITMQ_CONF_ENV_FILE=$d/rabbitmq-env.conf
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
ENV
    : >"$d/rabbitmq-env.conf"
    cat >"$d/rabbitmq.conf" <<CONF
listeners.tcp.1 = 127.0.0.1:$port
loopback_users.guest = true
log.console = false
log.file.level = info
cluster_partition_handling = pause_minority
CONF
    echo "[$RMQC_PLUGINS]." >"$d/plugins"
  done
  cat >"$dir/ctl" <<'CTL'
#!/usr/bin/env bash
# Control the omnibus test RabbitMQ cluster (written by scripts/brokers.d/rabbitmq-cluster.sh).
set -euo pipefail
DIR=$(cd "$(dirname "$0")" && pwd)
BIN=/usr/lib/rabbitmq/bin
as_rabbitmq() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups "$@"; else "$@"; fi; }
node_ok() { case "${1:-}" in 1|2|3) ;; *) echo "ctl: node must be 1, 2 or 3, not '${1:-}'" >&2; exit 2;; esac; }
ctl() { local n=$1; shift; ( . "$DIR/node$n/node.env"; as_rabbitmq "$BIN/rabbitmqctl" -n "rabbit$n@localhost" "$@" ); }
running_nodes() { # on node N: how many nodes run
  ctl "$1" cluster_status --formatter json 2>/dev/null | grep -o '"running_nodes":\[[^]]*\]' | grep -o '@localhost' | wc -l
}
case "${1:-}" in
  kill)
    node_ok "${2:-}"
    kill -9 "$(cat "$DIR/node$2/beam.pid")"
    ;;
  start)
    node_ok "${2:-}"
    n=$2
    if [ -s "$DIR/node$n/server.pid" ] && kill -0 "$(cat "$DIR/node$n/server.pid")" 2>/dev/null; then
      echo "ctl: node $n is running" >&2
    else
      ( . "$DIR/node$n/node.env"; cd "$DIR/node$n"
        if [ "$(id -u)" = 0 ]; then exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups setsid "$BIN/rabbitmq-server"; fi
        exec setsid "$BIN/rabbitmq-server" ) >>"$DIR/node$n/server.out" 2>&1 </dev/null &
      echo $! >"$DIR/node$n/server.pid"
    fi
    deadline=$((SECONDS + 120))
    until ctl "$n" await_startup --timeout 5 >/dev/null 2>&1 && [ "$(running_nodes "$n")" = 3 ]; do
      [ $SECONDS -lt $deadline ] || { echo "ctl: node $n not back in the cluster after 120 s" >&2; exit 1; }
      kill -0 "$(cat "$DIR/node$n/server.pid")" 2>/dev/null || { tail -20 "$DIR/node$n/server.out" >&2; exit 1; }
      sleep 0.5
    done
    ;;
  leader)
    [ -n "${2:-}" ] || { echo "usage: ctl leader QUEUE" >&2; exit 2; }
    for n in 1 2 3; do
      if out=$(ctl "$n" list_queues -q --no-table-headers name leader 2>/dev/null); then
        l=$(printf '%s\n' "$out" | awk -v q="$2" '$1 == q { print $2 }')
        case "$l" in rabbit[123]@localhost) l=${l#rabbit}; echo "${l%@localhost}"; exit 0;; esac
      fi
    done
    echo "ctl: no leader found for queue $2" >&2; exit 1
    ;;
  ctl)
    node_ok "${2:-}"
    n=$2; shift 2
    ctl "$n" "$@"
    ;;
  *) echo "usage: ctl kill N | start N | leader QUEUE | ctl N ARGS..." >&2; exit 2 ;;
esac
CTL
  chmod 755 "$dir/ctl"
}

# rmqc_spawn DIR N CMD...: become CMD, as the rabbitmq user in its own
# session with node N's environment (call it in the background).
rmqc_spawn() {
  local d=$1/node$2; shift 2
  # shellcheck source=/dev/null
  . "$d/node.env"
  cd "$d" || exit 1
  if [ "$(id -u)" = 0 ]; then exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups setsid "$@"; fi
  exec setsid "$@"
}

rmqc_ctl() { "$1/ctl" ctl "$2" "${@:3}"; }

rmqc_running_nodes() {
  rmqc_ctl "$1" "$2" cluster_status --formatter json 2>/dev/null | grep -o '"running_nodes":\[[^]]*\]' | grep -o '@localhost' | wc -l
}

rmqc_three() { [ "$(rmqc_running_nodes "$1" 1)" = 3 ]; }

rabbitmq-cluster_running() {
  local n
  pid_alive "$1/epmd.pid" || return 1
  for n in 1 2 3; do pid_alive "$1/node$n/server.pid" || return 1; done
}

rabbitmq-cluster_up() {
  local dir=$1 n
  if [ ! -x $RMQC_BIN/rabbitmq-server ]; then
    apt_install rabbitmq-server
    [ -x $RMQC_BIN/rabbitmq-server ] || die "$RMQC_BIN/rabbitmq-server missing after install"
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if rabbitmq-cluster_running "$dir" && [ -x "$dir/ctl" ] && rmqc_three "$dir"; then
    log "rabbitmq-cluster already running on 127.0.0.1:22672,22772,22872"
  else
    rabbitmq-cluster_down "$dir"
    rm -rf "$dir"/node[123]
    rmqc_files "$dir"
    local cookie
    cookie=$(head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr 'a-f' 'A-F' | head -c 30)
    for n in 1 2 3; do
      mkdir -p "$dir/node$n/home" "$dir/node$n/mnesia" "$dir/node$n/log"
      printf '%s' "$cookie" >"$dir/node$n/home/.erlang.cookie"
      chmod 400 "$dir/node$n/home/.erlang.cookie"
    done
    if [ "$(id -u)" = 0 ]; then chown -R rabbitmq: "$dir"; fi
    local p=$dir
    while [ "$p" != / ]; do p=$(dirname "$p"); chmod o+x "$p" 2>/dev/null || true; done
    log "starting epmd on 127.0.0.1:$RMQC_EPMD"
    rmqc_spawn "$dir" 1 epmd >"$dir/epmd.out" 2>&1 </dev/null &
    echo $! >"$dir/epmd.pid"
    for n in 1 2 3; do
      log "starting rabbit$n@localhost on 127.0.0.1:$(rmqc_port $n)"
      rmqc_spawn "$dir" $n $RMQC_BIN/rabbitmq-server >"$dir/node$n/server.out" 2>&1 </dev/null &
      echo $! >"$dir/node$n/server.pid"
    done
    local deadline=$((SECONDS + 180))
    for n in 1 2 3; do
      # await_startup fails at once until the node registered with epmd: retry.
      until rmqc_ctl "$dir" $n await_startup --timeout 5 >"$dir/node$n/await.out" 2>&1; do
        pid_alive "$dir/node$n/server.pid" || { tail -30 "$dir/node$n/server.out" >&2; die "rabbit$n exited during startup"; }
        [ $SECONDS -lt $deadline ] || { tail -30 "$dir/node$n/server.out" "$dir/node$n/await.out" >&2; die "rabbit$n not ready after 180 s"; }
        sleep 0.5
      done
    done
    for n in 2 3; do
      log "joining rabbit$n@localhost to rabbit1@localhost"
      { rmqc_ctl "$dir" $n stop_app && rmqc_ctl "$dir" $n reset && rmqc_ctl "$dir" $n join_cluster rabbit1@localhost \
          && rmqc_ctl "$dir" $n start_app; } >"$dir/node$n/join.out" 2>&1 \
        || { cat "$dir/node$n/join.out" >&2; die "rabbit$n could not join the cluster"; }
    done
    wait_for "3 running nodes" 60 rmqc_three "$dir" \
      || { rmqc_ctl "$dir" 1 cluster_status >&2 || true; die "rabbitmq-cluster: not 3 running nodes after 60 s"; }
    log "rabbitmq-cluster ready: rabbit1..3@localhost on 127.0.0.1:22672,22772,22872 (epmd pid $(cat "$dir/epmd.pid"))"
  fi
  {
    echo "export OMNIBUS_AMQP_CLUSTER_URLS=amqp://guest:guest@127.0.0.1:22672/,amqp://guest:guest@127.0.0.1:22772/,amqp://guest:guest@127.0.0.1:22872/"
    printf 'export OMNIBUS_AMQP_CLUSTER_CTL=%q\n' "$dir/ctl"
  } >"$dir/env"
}

rabbitmq-cluster_down() {
  local dir=$1 n
  for n in 3 2 1; do
    if pid_alive "$dir/node$n/server.pid"; then
      log "stopping rabbit$n@localhost"
      rmqc_ctl "$dir" $n stop >&2 || true
    fi
    stop_pid "$dir/node$n/server.pid" "rabbit$n"
    rm -f "$dir/node$n/beam.pid"
  done
  stop_pid "$dir/epmd.pid" epmd
}
