# RabbitMQ: Debian's rabbitmq-server, one node omnibus@localhost on
# 127.0.0.1:16720 (distribution 16721, its own epmd on 127.0.0.1:16722, AMQP
# over TLS on 16723), run as the rabbitmq user with every file (HOME and
# cookie, mnesia, logs, config, plugins, certificates) under the state dir.
# Sourced by scripts/brokers; see the contract there.
#
# The TLS listener's certificate is signed by a throwaway CA that test_certs
# (scripts/brokers) generates in DIR/tls on every fresh start. It asks for a
# client certificate and verifies one when given (verify_peer), but does not
# require one (fail_if_no_peer_cert = false). DIR/env exports its URL
# (OMNIBUS_AMQPS_URL), the CA (OMNIBUS_AMQPS_CA) and a client certificate and
# key signed by it (OMNIBUS_AMQPS_CERT, OMNIBUS_AMQPS_KEY).
#
# Besides DIR/env (OMNIBUS_AMQP_URL) it writes DIR/ctl, an executable that
# runs rabbitmqctl against this node with the node's environment, as the
# rabbitmq user. Its path is exported as OMNIBUS_AMQP_CTL so that tests can
# restart the broker without knowing any of this:
#   "$OMNIBUS_AMQP_CTL" stop_app    # closes every client connection and the listener
#   "$OMNIBUS_AMQP_CTL" start_app   # back up, durable queues recovered
RMQ_PORT=${OMNIBUS_RABBITMQ_PORT:-16720}
RMQ_TLS_PORT=$((RMQ_PORT + 3))
RMQ_NODE=omnibus@localhost
RMQ_BIN=/usr/lib/rabbitmq/bin

# rabbitmq_envfile DIR: write DIR/node.env, the environment every command for
# this node needs (sourced by DIR/ctl and by rabbitmq_up).
rabbitmq_envfile() {
  local dir=$1
  cat >"$dir/node.env" <<ENV
export RABBITMQ_NODENAME=$RMQ_NODE
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=$RMQ_PORT
export RABBITMQ_DIST_PORT=$((RMQ_PORT + 1))
export ERL_EPMD_ADDRESS=127.0.0.1
export ERL_EPMD_PORT=$((RMQ_PORT + 2))
export RABBITMQ_CTL_DIST_PORT_MIN=$((RMQ_PORT + 10))
export RABBITMQ_CTL_DIST_PORT_MAX=$((RMQ_PORT + 19))
export HOME=$dir/home
export RABBITMQ_MNESIA_BASE=$dir/mnesia
export RABBITMQ_LOG_BASE=$dir/log
export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/plugins
export RABBITMQ_CONFIG_FILE=$dir/rabbitmq
export RABBITMQ_PID_FILE=$dir/beam.pid
export RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
ENV
  # The Debian default env file only has comments, but point at our own so a
  # host-wide /etc/rabbitmq/rabbitmq-env.conf cannot move the node.
  : >"$dir/rabbitmq-env.conf"
  cat >"$dir/ctl" <<CTL
#!/bin/sh
# rabbitmqctl for the omnibus test node (written by scripts/brokers.d/rabbitmq.sh).
. "$dir/node.env"
if [ "\$(id -u)" = 0 ]; then
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups $RMQ_BIN/rabbitmqctl -n $RMQ_NODE "\$@"
fi
exec $RMQ_BIN/rabbitmqctl -n $RMQ_NODE "\$@"
CTL
  chmod 755 "$dir/ctl"
}

# The plugins the node runs: the consistent-hash exchange routes a group's
# messages by key over its partition queues (the adapter's partitions=N).
RMQ_PLUGINS=rabbitmq_consistent_hash_exchange

# rabbitmq_plugins_ready DIR: every plugin of RMQ_PLUGINS is enabled on the
# running node; enable them online (no restart) if not.
rabbitmq_plugins_ready() {
  local dir=$1
  ( . "$dir/node.env"
    if [ "$(id -u)" = 0 ]; then set -- setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups; else set --; fi
    "$@" $RMQ_BIN/rabbitmq-plugins -n $RMQ_NODE list --enabled --minimal 2>/dev/null | grep -qx "$RMQ_PLUGINS" \
      || "$@" $RMQ_BIN/rabbitmq-plugins -n $RMQ_NODE enable --online $RMQ_PLUGINS >&2 )
}

# rabbitmq_spawn DIR CMD...: become CMD, run as the rabbitmq user in its own
# session with the node's environment. Call it only in the background
# (`rabbitmq_spawn DIR cmd &`): it replaces the subshell, so $! is CMD's pid.
rabbitmq_spawn() {
  local dir=$1; shift
  # shellcheck source=/dev/null
  . "$dir/node.env"
  cd "$dir" || exit 1
  exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups setsid "$@"
}

rabbitmq_running() { pid_alive "$1/server.pid"; }

rabbitmq_ready() { "$1/ctl" await_startup --timeout 5; }

# rabbitmq_tls_ready DIR: a TLS handshake with the TLS listener succeeds,
# verifying its certificate (for 127.0.0.1) against DIR/tls/ca.pem and
# presenting the client certificate.
rabbitmq_tls_ready() {
  local t=$1/tls
  [ -s "$t/ca.pem" ] || return 1
  timeout 10 openssl s_client -connect "127.0.0.1:$RMQ_TLS_PORT" -verify_return_error -verify_ip 127.0.0.1 \
    -CAfile "$t/ca.pem" -cert "$t/client-cert.pem" -key "$t/client-key.pem" </dev/null
}

# rabbitmq_config DIR: the node's rabbitmq.conf, on stdout.
rabbitmq_config() {
  cat <<CONF
listeners.tcp.1 = 127.0.0.1:$RMQ_PORT
listeners.ssl.default = 127.0.0.1:$RMQ_TLS_PORT
ssl_options.cacertfile = $1/tls/ca.pem
ssl_options.certfile = $1/tls/server-cert.pem
ssl_options.keyfile = $1/tls/server-key.pem
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
loopback_users.guest = true
log.console = false
log.file.level = info
CONF
}

rabbitmq_up() {
  local dir=$1
  if [ ! -x $RMQ_BIN/rabbitmq-server ]; then
    apt_install rabbitmq-server
    [ -x $RMQ_BIN/rabbitmq-server ] || die "$RMQ_BIN/rabbitmq-server missing after install"
  fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  rabbitmq_envfile "$dir"
  rabbitmq_config "$dir" >"$dir/rabbitmq.conf.want"
  # A running node is kept only if it runs this very configuration (a
  # changed listener or port restarts it) and both listeners answer.
  if rabbitmq_running "$dir" && cmp -s "$dir/rabbitmq.conf" "$dir/rabbitmq.conf.want" \
    && rabbitmq_ready "$dir" >/dev/null 2>&1 && rabbitmq_tls_ready "$dir" >/dev/null 2>&1; then
    log "rabbitmq already running on 127.0.0.1:$RMQ_PORT, TLS on $RMQ_TLS_PORT"
    rabbitmq_plugins_ready "$dir" || die "rabbitmq: cannot enable the plugin $RMQ_PLUGINS"
  else
    rabbitmq_down "$dir"
    rm -rf "$dir/home" "$dir/mnesia" "$dir/log"
    mkdir -p "$dir/home" "$dir/mnesia" "$dir/log"
    echo "[$RMQ_PLUGINS]." >"$dir/plugins"
    mv "$dir/rabbitmq.conf.want" "$dir/rabbitmq.conf"
    test_certs "$dir"
    # Everything, the keys included, must be readable by the rabbitmq user.
    chown -R rabbitmq: "$dir"
    # The rabbitmq user must be able to reach DIR.
    local p=$dir
    while [ "$p" != / ]; do p=$(dirname "$p"); chmod o+x "$p" 2>/dev/null || true; done
    log "starting epmd on 127.0.0.1:$((RMQ_PORT + 2))"
    rabbitmq_spawn "$dir" epmd >"$dir/epmd.out" 2>&1 </dev/null &
    echo $! >"$dir/epmd.pid"
    log "starting rabbitmq-server on 127.0.0.1:$RMQ_PORT (logs in $dir/log)"
    rabbitmq_spawn "$dir" $RMQ_BIN/rabbitmq-server >"$dir/server.out" 2>&1 </dev/null &
    echo $! >"$dir/server.pid"
    local deadline=$((SECONDS + 120))
    # await_startup fails at once until the node registered with epmd: retry.
    until rabbitmq_ready "$dir" >"$dir/await.out" 2>&1; do
      rabbitmq_running "$dir" || { tail -30 "$dir/server.out" >&2; die "rabbitmq-server exited during startup"; }
      [ $SECONDS -lt $deadline ] || { tail -30 "$dir/server.out" "$dir/await.out" >&2; die "rabbitmq not ready after 120 s"; }
      sleep 0.5
    done
    wait_for "rabbitmq TLS listener" 30 rabbitmq_tls_ready "$dir" || {
      rabbitmq_tls_ready "$dir" 2>&1 | tail -5 >&2
      tail -30 "$dir"/log/*.log >&2 2>/dev/null
      rabbitmq_down "$dir"
      die "rabbitmq started but its TLS listener on 127.0.0.1:$RMQ_TLS_PORT does not complete a verified handshake"
    }
    log "rabbitmq ready on 127.0.0.1:$RMQ_PORT, TLS on $RMQ_TLS_PORT (server pid $(cat "$dir/server.pid"), epmd pid $(cat "$dir/epmd.pid"))"
  fi
  rm -f "$dir/rabbitmq.conf.want"
  {
    echo "export OMNIBUS_AMQP_URL=amqp://guest:guest@127.0.0.1:$RMQ_PORT/"
    echo "export OMNIBUS_AMQP_CTL=$dir/ctl"
    echo "export OMNIBUS_AMQPS_URL=amqps://guest:guest@127.0.0.1:$RMQ_TLS_PORT/"
    printf 'export OMNIBUS_AMQPS_CA=%q\n' "$dir/tls/ca.pem"
    printf 'export OMNIBUS_AMQPS_CERT=%q\n' "$dir/tls/client-cert.pem"
    printf 'export OMNIBUS_AMQPS_KEY=%q\n' "$dir/tls/client-key.pem"
  } >"$dir/env"
}

rabbitmq_down() {
  local dir=$1
  if rabbitmq_running "$dir"; then
    log "stopping rabbitmq node $RMQ_NODE"
    [ -x "$dir/ctl" ] && "$dir/ctl" stop >&2 || true
  fi
  # The wrapper exits once the VM stopped; TERM it (a graceful stop) if not.
  stop_pid "$dir/server.pid" rabbitmq-server
  stop_pid "$dir/epmd.pid" epmd
  rm -f "$dir/beam.pid"
}
