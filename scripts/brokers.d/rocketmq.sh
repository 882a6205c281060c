# Apache RocketMQ 5.3.3 from Maven Central jars: one name server on
# 127.0.0.1:19876 and one broker on 127.0.0.1:20911 (remoting; it also
# listens on 20909, its "fast" port, and 20912, its HA port, all on
# 127.0.0.1), and the proxy in cluster mode (a third JVM), which the
# adapter's gRPC client talks to: gRPC on port 20981, remoting on 20980.
# The proxy binds those two ports on every interface (5.3.3 has no bind
# address for them); both are below 32768. Sourced by scripts/brokers; see
# the contract there.
#
# The jars (namesrv, broker and their dependencies) are fetched by Maven into
# a cache outside the work tree ($OMNIBUS_ROCKETMQ_HOME, default
# ~/.cache/omnibus/rocketmq-<version>). The two small Java classes in
# scripts/brokers.d/rocketmq/ are compiled there too:
#   - LoopbackHAService: RocketMQ's HA listener binds every interface and has
#     no bind-address option; the broker loads this HA service through
#     META-INF/service, and it binds the HA port to 127.0.0.1. So every
#     port is on loopback and no network namespace is needed.
#   - Ready: the readiness check, a real send through the name server's
#     route to the broker (the broker's "boot success" log line comes before
#     the name server routes to it), and then through the proxy's remoting
#     port (the proxy exits if started before the broker is routable).
# Broker state (store, logs, configs) lives in the state dir.
#
# DIR/env exports OMNIBUS_ROCKETMQ_URL (the proxy, plus namesrv= and brokers=
# for topic and group creation) and OMNIBUS_ROCKETMQ_CTL, an executable taking kill (SIGKILL
# the broker), start (start it again on its store and wait until it is
# routable) or ready.
ROCKETMQ_VERSION=5.3.3
ROCKETMQ_NAMESRV_PORT=${OMNIBUS_ROCKETMQ_NAMESRV_PORT:-19876}
ROCKETMQ_BROKER_PORT=${OMNIBUS_ROCKETMQ_BROKER_PORT:-20911}
ROCKETMQ_PROXY_GRPC_PORT=${OMNIBUS_ROCKETMQ_PROXY_PORT:-20981}
ROCKETMQ_PROXY_REMOTING_PORT=$((ROCKETMQ_PROXY_GRPC_PORT - 1))
ROCKETMQ_SRC=$ROOT/scripts/brokers.d/rocketmq

rocketmq_home() { echo "${OMNIBUS_ROCKETMQ_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/omnibus/rocketmq-$ROCKETMQ_VERSION}"; }

# rocketmq_fetch DIR MARKER ARTIFACT...: the runtime jars of the RocketMQ
# artifacts (and their dependencies) into DIR; MARKER says it is complete.
rocketmq_fetch() {
  local dir=$1 marker=$2 tmp a deps=""
  shift 2
  [ -f "$marker" ] && return 0
  command -v mvn >/dev/null || apt_install maven
  log "downloading RocketMQ $ROCKETMQ_VERSION jars ($*) from Maven Central into $dir"
  tmp="$dir.download"
  rm -rf "$dir" "$tmp"
  mkdir -p "$tmp"
  for a in "$@"; do
    deps+="<dependency><groupId>org.apache.rocketmq</groupId><artifactId>$a</artifactId><version>$ROCKETMQ_VERSION</version></dependency>"
  done
  cat >"$tmp/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>omnibus</groupId><artifactId>rocketmq-jars</artifactId><version>1</version><packaging>pom</packaging>
  <dependencies>$deps</dependencies>
</project>
POM
  mvn -q -B -f "$tmp/pom.xml" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/lib" \
    >"$tmp/maven.log" 2>&1 \
    || { tail -30 "$tmp/maven.log" >&2; die "maven could not fetch the RocketMQ jars (log: $tmp/maven.log)"; }
  for a in "$@"; do
    [ -f "$tmp/lib/$a-$ROCKETMQ_VERSION.jar" ] || die "$a jar missing after the Maven download"
  done
  mv "$tmp/lib" "$dir"
  rm -rf "$tmp"
  touch "$marker"
}

# rocketmq_install: java, Maven, the jars and the compiled helper classes.
rocketmq_install() {
  local home
  command -v javac >/dev/null || apt_install openjdk-17-jdk-headless
  home=$(rocketmq_home)
  mkdir -p "$home"
  rocketmq_fetch "$home/lib" "$home/.complete" rocketmq-namesrv rocketmq-broker
  # The proxy (cluster mode, a third JVM) has a dependency set of its own.
  rocketmq_fetch "$home/proxy-lib" "$home/proxy.complete" rocketmq-proxy
  # The helper classes are rebuilt when their sources change.
  if ! cmp -s "$ROCKETMQ_SRC/LoopbackHAService.java" "$home/classes.src/LoopbackHAService.java" \
     || ! cmp -s "$ROCKETMQ_SRC/Ready.java" "$home/classes.src/Ready.java"; then
    rm -rf "$home/classes" "$home/classes.src"
    mkdir -p "$home/classes/META-INF/service"
    javac -d "$home/classes" -cp "$home/lib/*" "$ROCKETMQ_SRC/LoopbackHAService.java" "$ROCKETMQ_SRC/Ready.java" \
      || die "cannot compile $ROCKETMQ_SRC/*.java"
    echo omnibus.LoopbackHAService >"$home/classes/META-INF/service/org.apache.rocketmq.store.ha.HAService"
    mkdir -p "$home/classes.src"
    cp "$ROCKETMQ_SRC/LoopbackHAService.java" "$ROCKETMQ_SRC/Ready.java" "$home/classes.src/"
  fi
}

rocketmq_cp() { local home; home=$(rocketmq_home); echo "$home/classes:$home/lib/*"; }

rocketmq_java_opts() { echo "-XX:+UseG1GC -Duser.home=$1/home -Drocketmq.home.dir=$1/home"; }

rocketmq_proxy_cp() { local home; home=$(rocketmq_home); echo "$home/classes:$home/proxy-lib/*"; }

rocketmq_running() { pid_alive "$1/namesrv.pid" && pid_alive "$1/broker.pid" && pid_alive "$1/proxy.pid"; }

# rocketmq_ready DIR [SECONDS]: a message sent through the name server's
# route to the broker and stored (SEND_OK).
rocketmq_ready() {
  # shellcheck disable=SC2046
  timeout $((${2:-20} + 30)) java -Xmx128m $(rocketmq_java_opts "$1") -cp "$(rocketmq_cp)" omnibus.Ready \
    "127.0.0.1:$ROCKETMQ_NAMESRV_PORT" "${2:-20}" >>"$1/ready.log" 2>&1
}

# rocketmq_proxy_ready DIR [SECONDS]: the same round trip through the
# proxy (its remoting port answers route lookups with itself as the broker).
rocketmq_proxy_ready() {
  # shellcheck disable=SC2046
  timeout $((${2:-20} + 30)) java -Xmx128m $(rocketmq_java_opts "$1") -cp "$(rocketmq_proxy_cp)" omnibus.Ready \
    "127.0.0.1:$ROCKETMQ_PROXY_REMOTING_PORT" "${2:-20}" >>"$1/ready.log" 2>&1
}

rocketmq_proxy_config() {
  cat >"$1/proxy.json" <<CONF
{
  "rocketMQClusterName": "OmnibusCluster",
  "namesrvAddr": "127.0.0.1:$ROCKETMQ_NAMESRV_PORT",
  "grpcServerPort": $ROCKETMQ_PROXY_GRPC_PORT,
  "remotingListenPort": $ROCKETMQ_PROXY_REMOTING_PORT
}
CONF
}

# rocketmq_start_proxy DIR: the proxy in cluster mode, after the broker is
# routable (started earlier it exits: it creates a system topic on the
# cluster at boot). Its gRPC and remoting ports bind every interface (5.3.3
# has no bind address for them).
rocketmq_start_proxy() {
  local dir=$1
  pid_alive "$dir/proxy.pid" && return 0
  rocketmq_proxy_config "$dir"
  log "starting the rocketmq proxy on port $ROCKETMQ_PROXY_GRPC_PORT (gRPC) and $ROCKETMQ_PROXY_REMOTING_PORT (remoting)"
  # shellcheck disable=SC2046,SC2086
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/proxy.pid" \
    java -Xms128m -Xmx512m $(rocketmq_java_opts "$dir") -cp "$(rocketmq_proxy_cp)" \
    org.apache.rocketmq.proxy.ProxyStartup -pm cluster -pc "$dir/proxy.json" </dev/null >"$dir/proxy.out" 2>&1 &
  wait_for "proxy pidfile" 10 test -s "$dir/proxy.pid" || die "rocketmq proxy did not start"
  rocketmq_proxy_ready "$dir" 240 \
    || { tail -30 "$dir/proxy.out" "$dir/ready.log" >&2; die "rocketmq proxy not ready within 240 s"; }
}

rocketmq_configs() {
  local dir=$1
  mkdir -p "$dir/home" "$dir/store"
  printf 'listenPort=%s\nbindAddress=127.0.0.1\n' "$ROCKETMQ_NAMESRV_PORT" >"$dir/namesrv.conf"
  cat >"$dir/broker.conf" <<CONF
brokerClusterName=OmnibusCluster
brokerName=omnibus-broker
brokerId=0
brokerRole=ASYNC_MASTER
flushDiskType=ASYNC_FLUSH
namesrvAddr=127.0.0.1:$ROCKETMQ_NAMESRV_PORT
brokerIP1=127.0.0.1
bindAddress=127.0.0.1
listenPort=$ROCKETMQ_BROKER_PORT
storePathRootDir=$dir/store
storePathCommitLog=$dir/store/commitlog
mappedFileSizeCommitLog=67108864
mappedFileSizeConsumeQueue=300000
autoCreateTopicEnable=true
autoCreateSubscriptionGroup=true
fileReservedTime=1
diskMaxUsedSpaceRatio=95
CONF
}

# rocketmq_start_one DIR NAME CLASS CONF HEAP: start a JVM in its own
# session, its pid in DIR/NAME.pid.
rocketmq_start_one() {
  local dir=$1 name=$2 class=$3 conf=$4 heap=$5
  # shellcheck disable=SC2046,SC2086
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/$name.pid" \
    java $heap $(rocketmq_java_opts "$dir") -cp "$(rocketmq_cp)" "$class" -c "$conf" </dev/null >"$dir/$name.out" 2>&1 &
  wait_for "$name pidfile" 10 test -s "$dir/$name.pid" || die "$name did not start"
}

rocketmq_start_broker() {
  local dir=$1
  pid_alive "$dir/broker.pid" && return 0
  log "starting the rocketmq broker on 127.0.0.1:$ROCKETMQ_BROKER_PORT"
  rocketmq_start_one "$dir" broker org.apache.rocketmq.broker.BrokerStartup "$dir/broker.conf" \
    "-Xms256m -Xmx512m -XX:MaxDirectMemorySize=512m"
  rocketmq_ready "$dir" 240 \
    || { tail -30 "$dir/broker.out" "$dir/ready.log" >&2; die "rocketmq broker not routable within 240 s"; }
}

rocketmq_env() {
  local dir=$1
  cat >"$dir/ctl" <<CTL
#!/usr/bin/env bash
# kill | start | ready: the RocketMQ broker of scripts/brokers (state in $dir).
set -euo pipefail
case "\${1:-}" in
  kill) kill -9 "\$(cat "$dir/broker.pid")" && rm -f "$dir/broker.pid" ;;
  start|ready) OMNIBUS_BROKERS_DIR="$(dirname "$dir")" "$ROOT/scripts/brokers" up rocketmq >/dev/null ;;
  *) echo "usage: \$0 kill|start|ready" >&2; exit 2 ;;
esac
CTL
  chmod +x "$dir/ctl"
  {
    echo "export OMNIBUS_ROCKETMQ_URL='rocketmq://127.0.0.1:$ROCKETMQ_PROXY_GRPC_PORT?namesrv=127.0.0.1:$ROCKETMQ_NAMESRV_PORT&brokers=127.0.0.1:$ROCKETMQ_BROKER_PORT'"
    printf 'export OMNIBUS_ROCKETMQ_CTL=%q\n' "$dir/ctl"
  } >"$dir/env"
}

rocketmq_up() {
  local dir=$1
  dir=$(cd "$dir" && pwd)
  rocketmq_install
  if rocketmq_running "$dir" && rocketmq_ready "$dir" 10; then
    log "rocketmq already running (namesrv pid $(cat "$dir/namesrv.pid"), broker pid $(cat "$dir/broker.pid"))"
    rocketmq_env "$dir"
    return 0
  fi
  [ -f "$dir/broker.conf" ] || rocketmq_configs "$dir"
  if ! pid_alive "$dir/namesrv.pid"; then
    log "starting the rocketmq name server on 127.0.0.1:$ROCKETMQ_NAMESRV_PORT"
    rocketmq_start_one "$dir" namesrv org.apache.rocketmq.namesrv.NamesrvStartup "$dir/namesrv.conf" "-Xms128m -Xmx256m"
    wait_for "namesrv port" 180 bash -c "echo >/dev/tcp/127.0.0.1/$ROCKETMQ_NAMESRV_PORT" \
      || { tail -30 "$dir/namesrv.out" >&2; die "rocketmq name server not listening within 180 s"; }
  fi
  rocketmq_start_broker "$dir"
  rocketmq_start_proxy "$dir"
  log "rocketmq ready: namesrv 127.0.0.1:$ROCKETMQ_NAMESRV_PORT, broker 127.0.0.1:$ROCKETMQ_BROKER_PORT, proxy port $ROCKETMQ_PROXY_GRPC_PORT"
  rocketmq_env "$dir"
}

# rocketmq_down DIR: stop the broker, then the name server, and remove the
# store, so that the next up starts from a fresh broker state.
rocketmq_down() {
  stop_pid "$1/proxy.pid" "rocketmq proxy"
  stop_pid "$1/broker.pid" "rocketmq broker"
  stop_pid "$1/namesrv.pid" "rocketmq namesrv"
  rm -rf "$1/store" "$1/home" "$1/broker.conf" "$1/namesrv.conf" "$1/proxy.json"
}
