# A 3-node Apache Kafka 4.x cluster (KRaft, every node a combined
# broker+controller) on 127.0.0.1, for the leader-change tests: node N
# listens on 21092+100*(N-1) (PLAINTEXT) and 21093+100*(N-1) (CONTROLLER).
# Replication factor 3 and min.insync.replicas=2 by default;
# broker.session.timeout.ms=3000 so that a killed node is fenced and its
# partitions get new leaders within about 3 s. Sourced by scripts/brokers;
# see the contract there.
#
# It reuses the jars of scripts/brokers.d/kafka.sh (kafka_install, the same
# cache). Besides DIR/env it writes DIR/ctl, which the tests run (its path
# is exported as OMNIBUS_KAFKA_CLUSTER_CTL):
#
#   ctl kill N                 SIGKILL node N (1..3) and wait until it is gone
#   ctl start N                start node N on its existing data; wait until the cluster lists 3 brokers
#   ctl leader TOPIC PARTITION print the node ID leading TOPIC's PARTITION
#   ctl isr TOPIC              wait until every partition of TOPIC has 3 in-sync replicas
#
# Stop: all three nodes get SIGTERM at once (stopped one after another, the
# last node waits minutes for a quorum for its controlled shutdown).
KCLUSTER_PORTS=(21092 21192 21292)
KCLUSTER_ID=Q2x4bS1jbHVzdGVyLXRzdA

kcluster_brokers() { local IFS=,; echo "${KCLUSTER_PORTS[*]/#/127.0.0.1:}"; }

# kcluster_config DIR N: server.properties of node N.
kcluster_config() {
  local dir=$1 n=$2 port=${KCLUSTER_PORTS[$(($2 - 1))]}
  cat <<PROPS
process.roles=broker,controller
node.id=$n
controller.quorum.voters=1@127.0.0.1:21093,2@127.0.0.1:21193,3@127.0.0.1:21293
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$((port + 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/node$n/data
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
auto.create.topics.enable=false
num.partitions=1
group.initial.rebalance.delay.ms=0
group.consumer.min.session.timeout.ms=1000
group.min.session.timeout.ms=1000
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
num.replica.fetchers=1
delete.topic.enable=true
log.segment.bytes=67108864
message.max.bytes=8388608
replica.fetch.max.bytes=8388608
# Fence a dead node after 3 s instead of 9 s: leaders move in about 3 s.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
PROPS
}

kafka-cluster_running() {
  local n
  for n in 1 2 3; do pid_alive "$1/node$n/kafka.pid" || return 1; done
}

# kcluster_ctl DIR: write DIR/ctl (see the header).
kcluster_ctl() {
  local dir=$1 lib
  lib=$(kafka_lib)
  cat >"$dir/ctl" <<CTL
#!/usr/bin/env bash
# Control of the omnibus 3-node test Kafka cluster (written by scripts/brokers.d/kafka-cluster.sh).
set -euo pipefail
DIR=$dir
BROKERS=$(kcluster_brokers)
TOOL=\$DIR/bin/kafkacluster
alive() { [ -s "\$DIR/node\$1/kafka.pid" ] && kill -0 "\$(cat "\$DIR/node\$1/kafka.pid")" 2>/dev/null; }
node() { case "\${1:-}" in 1|2|3) ;; *) echo "ctl: node must be 1, 2 or 3, not '\${1:-}'" >&2; exit 2;; esac; }
case "\${1:-}" in
  kill)
    node "\${2:-}"
    if alive "\$2"; then
      pid=\$(cat "\$DIR/node\$2/kafka.pid")
      kill -9 "\$pid"
      for _ in \$(seq 1 100); do kill -0 "\$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "\$pid" 2>/dev/null && { echo "ctl: node \$2 (pid \$pid) still alive after SIGKILL" >&2; exit 1; }
    fi
    rm -f "\$DIR/node\$2/kafka.pid"
    ;;
  start)
    node "\${2:-}"
    if ! alive "\$2"; then
      mkdir -p "\$DIR/node\$2/logs"
      setsid bash -c 'echo \$\$ >"\$1"; shift; exec "\$@"' _ "\$DIR/node\$2/kafka.pid" \\
        java -Xms128m -Xmx256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \\
        -Dkafka.logs.dir="\$DIR/node\$2/logs" -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2.properties" \\
        -cp "$lib/*" kafka.Kafka "\$DIR/node\$2/server.properties" </dev/null >"\$DIR/node\$2/logs/stdout.log" 2>&1 &
    fi
    [ "\${3:-}" = "--no-wait" ] || "\$TOOL" ready -brokers "\$BROKERS" -want 3 -timeout 120s
    ;;
  leader) "\$TOOL" leader -brokers "\$BROKERS" -timeout 30s "\${2:?topic}" "\${3:?partition}" ;;
  isr) "\$TOOL" isr -brokers "\$BROKERS" -want 3 -timeout 120s "\${2:?topic}" ;;
  *) sed -n '2,2p' "\$0" >&2; echo "usage: ctl kill N | start N | leader TOPIC PARTITION | isr TOPIC" >&2; exit 2 ;;
esac
CTL
  chmod 755 "$dir/ctl"
}

kafka-cluster_up() {
  local dir=$1 lib n fresh=
  dir=$(cd "$dir" && pwd)
  kafka_install
  lib=$(kafka_lib)
  mkdir -p "$dir/bin"
  (cd "$ROOT/adapters/kafka" && go build -o "$dir/bin/kafkacluster" ./internal/cmd/kafkacluster) || die "cannot build adapters/kafka/internal/cmd/kafkacluster"
  kcluster_ctl "$dir"
  for n in 1 2 3; do
    mkdir -p "$dir/node$n"
    kcluster_config "$dir" "$n" >"$dir/node$n/server.properties.want"
    cmp -s "$dir/node$n/server.properties" "$dir/node$n/server.properties.want" || fresh=1
  done
  if [ -z "$fresh" ] && kafka-cluster_running "$dir" && "$dir/bin/kafkacluster" ready -brokers "$(kcluster_brokers)" -timeout 10s 2>>"$dir/ready.log"; then
    log "kafka-cluster already running on $(kcluster_brokers)"
  else
    kafka-cluster_down "$dir"
    for n in 1 2 3; do
      rm -rf "$dir/node$n/data" "$dir/node$n/logs"
      mkdir -p "$dir/node$n/data" "$dir/node$n/logs"
      mv "$dir/node$n/server.properties.want" "$dir/node$n/server.properties"
      java -Xmx256m -Dkafka.logs.dir="$dir/node$n/logs" -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2.properties" \
        -cp "$lib/*" kafka.tools.StorageTool format --cluster-id "$KCLUSTER_ID" \
        --config "$dir/node$n/server.properties" >"$dir/node$n/format.log" 2>&1 \
        || { cat "$dir/node$n/format.log" >&2; die "kafka-cluster: storage format of node $n failed"; }
    done
    log "starting kafka-cluster on $(kcluster_brokers)"
    for n in 1 2 3; do "$dir/ctl" start "$n" --no-wait; done
    "$dir/bin/kafkacluster" ready -brokers "$(kcluster_brokers)" -want 3 -timeout 180s 2>>"$dir/ready.log" \
      || { tail -5 "$dir/ready.log" >&2; kafka-cluster_down "$dir"; die "kafka-cluster: the 3 nodes did not form a cluster within 180 s; see $dir/node*/logs"; }
    log "kafka-cluster ready on $(kcluster_brokers)"
  fi
  rm -f "$dir"/node*/server.properties.want
  {
    echo "export OMNIBUS_KAFKA_CLUSTER_BROKERS=$(kcluster_brokers)"
    printf 'export OMNIBUS_KAFKA_CLUSTER_CTL=%q\n' "$dir/ctl"
  } >"$dir/env"
}

# kafka-cluster_down DIR: SIGTERM every node at once, then wait (SIGKILL
# after 30 s).
kafka-cluster_down() {
  local dir=$1 n pids=() pid
  for n in 1 2 3; do
    if pid_alive "$dir/node$n/kafka.pid"; then pids+=("$(cat "$dir/node$n/kafka.pid")"); fi
  done
  if [ ${#pids[@]} -gt 0 ]; then
    log "stopping kafka-cluster (pids ${pids[*]})"
    kill "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 1 300); do
      alive=
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
      [ -z "$alive" ] && break
      sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && { log "kafka-cluster pid $pid did not stop in 30 s, killing"; kill -9 "$pid" 2>/dev/null || true; }; done
  fi
  rm -f "$dir"/node*/kafka.pid
}
