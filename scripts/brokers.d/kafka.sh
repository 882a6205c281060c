# Apache Kafka 4.x (KRaft, one combined broker+controller node) from Maven
# Central jars, on 127.0.0.1:19092 (controller 19093). Sourced by
# scripts/brokers; see the contract there.
#
# The broker's classpath is resolved by Maven from scripts/kafka/pom.xml into
# a cache outside the work tree ($OMNIBUS_KAFKA_LIB, default
# ~/.cache/omnibus/kafka-<version>/lib), so later runs and fresh clones on the
# same machine skip the download. Data and logs live in the state dir and are
# wiped on every fresh start.
KAFKA_PORT=${OMNIBUS_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${OMNIBUS_KAFKA_CONTROLLER_PORT:-19093}
KAFKA_CLUSTER_ID=5L6g3nShT-eMCtK--X86sw
KAFKA_SRC=$ROOT/scripts/kafka

kafka_version() { sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_SRC/pom.xml"; }

kafka_lib() { echo "${OMNIBUS_KAFKA_LIB:-${XDG_CACHE_HOME:-$HOME/.cache}/omnibus/kafka-$(kafka_version)/lib}"; }

# kafka_install: make sure java, Maven and the broker's jars are present.
kafka_install() {
  local lib stamp want
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  lib=$(kafka_lib)
  stamp="$lib/.complete"
  want=$(sha256sum "$KAFKA_SRC/pom.xml" | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  command -v mvn >/dev/null || apt_install maven
  log "downloading Apache Kafka $(kafka_version) jars from Maven Central into $lib"
  rm -rf "$lib"
  mkdir -p "$lib"
  mvn -q -B -f "$KAFKA_SRC/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$lib" >"$lib.maven.log" 2>&1 \
    || { tail -30 "$lib.maven.log" >&2; die "maven could not fetch the Kafka jars (log: $lib.maven.log)"; }
  ls "$lib"/kafka_2.13-*.jar >/dev/null 2>&1 || die "kafka_2.13 jar missing from $lib after maven"
  echo "$want" >"$stamp"
}

kafka_running() { pid_alive "$1/kafka.pid"; }

# kafka_ready DIR TIMEOUT: a metadata request answers with a broker and a controller.
kafka_ready() { "$1/bin/kafkaready" -brokers "127.0.0.1:$KAFKA_PORT" -timeout "$2" 2>>"$1/ready.log"; }

kafka_up() {
  local dir=$1 lib deadline
  dir=$(cd "$dir" && pwd)
  kafka_install
  lib=$(kafka_lib)
  mkdir -p "$dir/bin"
  (cd "$ROOT" && go build -o "$dir/bin/kafkaready" ./integration/cmd/kafkaready) || die "cannot build integration/cmd/kafkaready"
  if kafka_running "$dir" && kafka_ready "$dir" 10s; then
    log "kafka already running on 127.0.0.1:$KAFKA_PORT (pid $(cat "$dir/kafka.pid"))"
  else
    kafka_down "$dir"
    rm -rf "$dir/data" "$dir/logs" "$dir/ready.log"
    mkdir -p "$dir/data" "$dir/logs"
    sed -e "s|@PORT@|$KAFKA_PORT|g" -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" -e "s|@DATA@|$dir/data|g" \
      "$KAFKA_SRC/server.properties.in" >"$dir/server.properties"
    log "formatting KRaft storage in $dir/data"
    java -Xmx256m -Dkafka.logs.dir="$dir/logs" -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2.properties" \
      -cp "$lib/*" kafka.tools.StorageTool format --cluster-id "$KAFKA_CLUSTER_ID" \
      --config "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; die "kafka storage format failed"; }
    log "starting kafka on 127.0.0.1:$KAFKA_PORT"
    # setsid: the broker outlives this script and its terminal; the inner
    # shell writes its own PID and then becomes java (exec), so the pidfile
    # names the broker itself.
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/kafka.pid" \
      java -Xms256m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
      -Dkafka.logs.dir="$dir/logs" -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2.properties" \
      -cp "$lib/*" kafka.Kafka "$dir/server.properties" </dev/null >"$dir/logs/stdout.log" 2>&1 &
    deadline=$((SECONDS + 120))
    until [ -s "$dir/kafka.pid" ] && grep -q 'Kafka Server started' "$dir/logs/server.log" 2>/dev/null; do
      if [ -s "$dir/kafka.pid" ] && ! kafka_running "$dir"; then
        tail -30 "$dir/logs/server.log" "$dir/logs/stdout.log" >&2 2>/dev/null
        rm -f "$dir/kafka.pid"
        die "kafka exited during start; see $dir/logs"
      fi
      [ $SECONDS -lt $deadline ] || { tail -30 "$dir/logs/server.log" >&2; kafka_down "$dir"; die "kafka did not log 'Kafka Server started' within 120 s"; }
      sleep 0.2
    done
    kafka_ready "$dir" 60s || { tail -5 "$dir/ready.log" >&2; kafka_down "$dir"; die "kafka logged started but answers no metadata request"; }
    log "kafka ready on 127.0.0.1:$KAFKA_PORT (pid $(cat "$dir/kafka.pid"))"
  fi
  echo "export OMNIBUS_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT" >"$dir/env"
}

kafka_down() {
  local dir=$1
  stop_pid "$dir/kafka.pid" kafka
}
