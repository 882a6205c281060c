# ActiveMQ Classic 6.3.1 from Maven Central jars, one broker with an AMQP 1.0
# transport on 127.0.0.1:17772 and AMQP over TLS on 127.0.0.1:17774 (SASL
# PLAIN, no anonymous login). Sourced by scripts/brokers; see the contract
# there.
#
# The jars are fetched by Maven into a cache outside the work tree
# ($OMNIBUS_ACTIVEMQ_CLASSIC_HOME, default
# ~/.cache/omnibus/activemq-classic-<version>). Two helpers are built there
# too, again when their sources change:
#   - scripts/brokers.d/activemq-classic/ClassicBroker.java, the launcher: it
#     configures the broker in code (KahaDB and the job scheduler under
#     DIR/data, a dead-letter queue "DLQ.<queue>" per queue, the statistics
#     plugin, JMX and advisories off);
#   - adapters/activemq/internal/amqpready, the readiness check: one durable
#     message sent to a queue and received back over AMQP.
# The broker's state is kept in DIR/data across SIGKILL and up (a restart
# recovers KahaDB); down removes it, so the next up starts fresh.
#
# The TLS transport's certificate is signed by a throwaway CA that test_certs
# (scripts/brokers) writes to DIR/tls with the broker's data.
#
# DIR/env exports OMNIBUS_ACTIVEMQ_CLASSIC_URL (activemq://...?flavor=classic),
# OMNIBUS_ACTIVEMQ_CLASSIC_TLS_URL (activemqs://...) with
# OMNIBUS_ACTIVEMQ_CLASSIC_CA, and OMNIBUS_ACTIVEMQ_CLASSIC_PIDFILE, the JVM's
# pidfile, for tests that SIGKILL the broker and start it again with
# scripts/brokers up activemq-classic.
CLASSIC_VERSION=6.3.1
CLASSIC_PORT=${OMNIBUS_ACTIVEMQ_CLASSIC_PORT:-17772}
CLASSIC_TLS_PORT=$((CLASSIC_PORT + 2))
# Throwaway credentials of the test broker.
CLASSIC_USER=omnibus
CLASSIC_PASSWORD=omnibus-classic-secret-3c9d
CLASSIC_SRC=$ROOT/scripts/brokers.d/activemq-classic

classic_home() { echo "${OMNIBUS_ACTIVEMQ_CLASSIC_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/omnibus/activemq-classic-$CLASSIC_VERSION}"; }

# classic_install: java, Maven, the jars, the compiled launcher and the
# readiness check.
classic_install() {
  local home tmp sum
  command -v javac >/dev/null || apt_install openjdk-17-jdk-headless
  command -v go >/dev/null || die "activemq-classic needs go to build its readiness check"
  home=$(classic_home)
  if ! [ -f "$home/.complete" ]; then
    log "downloading ActiveMQ Classic $CLASSIC_VERSION jars from Maven Central into $home"
    tmp="$home.download"
    rm -rf "$home"
    maven_jars "$tmp" "org.apache.activemq:activemq-broker:$CLASSIC_VERSION" \
      "org.apache.activemq:activemq-client:$CLASSIC_VERSION" "org.apache.activemq:activemq-kahadb-store:$CLASSIC_VERSION" \
      "org.apache.activemq:activemq-amqp:$CLASSIC_VERSION" "org.apache.activemq:activemq-jaas:$CLASSIC_VERSION" \
      org.slf4j:slf4j-simple:2.0.16 \
      || die "maven could not fetch the ActiveMQ Classic jars (log: $tmp/maven.log)"
    [ -f "$tmp/lib/activemq-broker-$CLASSIC_VERSION.jar" ] || die "activemq-broker jar missing after the Maven download"
    mv "$tmp" "$home"
    touch "$home/.complete"
  fi
  if ! cmp -s "$CLASSIC_SRC/ClassicBroker.java" "$home/classes.src/ClassicBroker.java"; then
    rm -rf "$home/classes" "$home/classes.src"
    mkdir -p "$home/classes" "$home/classes.src"
    javac -d "$home/classes" -cp "$home/lib/*" "$CLASSIC_SRC/ClassicBroker.java" \
      || die "cannot compile $CLASSIC_SRC/ClassicBroker.java"
    cp "$CLASSIC_SRC/ClassicBroker.java" "$home/classes.src/"
  fi
  sum=$(cat "$ROOT/adapters/activemq/internal/amqpready/main.go" "$ROOT/adapters/activemq/go.sum" | cksum | cut -d' ' -f1)
  if ! [ -x "$home/amqpready" ] || [ "$(cat "$home/amqpready.sum" 2>/dev/null)" != "$sum" ]; then
    log "building the AMQP readiness check"
    (cd "$ROOT/adapters/activemq" && go build -o "$home/amqpready" ./internal/amqpready) \
      || die "cannot build adapters/activemq/internal/amqpready"
    echo "$sum" >"$home/amqpready.sum"
  fi
}

classic_running() { pid_alive "$1/classic.pid"; }

# classic_ready DIR: a real AMQP round trip through a queue.
classic_ready() {
  AMQPREADY_PASSWORD=$CLASSIC_PASSWORD "$(classic_home)/amqpready" -addr "127.0.0.1:$CLASSIC_PORT" \
    -user "$CLASSIC_USER" -timeout 10s >>"$1/ready.log" 2>&1
}

# classic_tls_ready DIR: a TLS handshake with the TLS transport verifies its
# certificate for 127.0.0.1 against DIR/tls/ca.pem.
classic_tls_ready() {
  [ -s "$1/tls/ca.pem" ] || return 1
  timeout 10 openssl s_client -connect "127.0.0.1:$CLASSIC_TLS_PORT" -verify_return_error -verify_ip 127.0.0.1 \
    -CAfile "$1/tls/ca.pem" </dev/null
}

classic_env() {
  local dir=$1
  {
    echo "export OMNIBUS_ACTIVEMQ_CLASSIC_URL='activemq://$CLASSIC_USER:$CLASSIC_PASSWORD@127.0.0.1:$CLASSIC_PORT?flavor=classic'"
    echo "export OMNIBUS_ACTIVEMQ_CLASSIC_TLS_URL='activemqs://$CLASSIC_USER:$CLASSIC_PASSWORD@127.0.0.1:$CLASSIC_TLS_PORT?flavor=classic'"
    printf 'export OMNIBUS_ACTIVEMQ_CLASSIC_CA=%q\n' "$dir/tls/ca.pem"
    printf 'export OMNIBUS_ACTIVEMQ_CLASSIC_PIDFILE=%q\n' "$dir/classic.pid"
  } >"$dir/env"
}

activemq-classic_running() { classic_running "$1"; }

activemq-classic_up() {
  local dir=$1 home deadline
  dir=$(cd "$dir" && pwd)
  classic_install
  home=$(classic_home)
  if classic_running "$dir" && classic_ready "$dir" && classic_tls_ready "$dir" >/dev/null 2>&1; then
    log "activemq-classic already running on 127.0.0.1:$CLASSIC_PORT (pid $(cat "$dir/classic.pid"))"
    classic_env "$dir"
    return 0
  fi
  stop_pid "$dir/classic.pid" activemq-classic
  mkdir -p "$dir/data"
  if ! [ -s "$dir/tls/server.p12" ]; then
    test_certs "$dir"
    openssl pkcs12 -export -in "$dir/tls/server-cert.pem" -inkey "$dir/tls/server-key.pem" -name omnibus \
      -out "$dir/tls/server.p12" -passout "pass:$CLASSIC_PASSWORD" >>"$dir/openssl.log" 2>&1 \
      || die "cannot write the ActiveMQ Classic TLS keystore"
  fi
  log "starting activemq-classic on 127.0.0.1:$CLASSIC_PORT, TLS on $CLASSIC_TLS_PORT"
  # setsid: the broker outlives this script; the pidfile names the JVM.
  # The serial collector and the C1 compiler only: a quick start and a small
  # footprint on a busy 2-core machine. The heap may grow to 1 GiB: Classic
  # keeps every destination and its message cursor in memory, and a test
  # broker that lives for days collects thousands of queues (384 MiB ran
  # out of heap after a day of test and benchmark runs).
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/classic.pid" \
    java -Xms64m -Xmx1g -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -cp "$home/classes:$home/lib/*" omnibus.ClassicBroker "$dir/data" "$CLASSIC_PORT" "$CLASSIC_USER" "$CLASSIC_PASSWORD" \
    "$CLASSIC_TLS_PORT" "$dir/tls/server.p12" \
    </dev/null >"$dir/classic.out" 2>&1 &
  deadline=$((SECONDS + 180))
  until [ -s "$dir/classic.pid" ] && grep -qs "OMNIBUS CLASSIC BROKER STARTED" "$dir/classic.out"; do
    if [ -s "$dir/classic.pid" ] && ! classic_running "$dir"; then
      tail -30 "$dir/classic.out" >&2
      rm -f "$dir/classic.pid"
      die "activemq-classic exited during start; see $dir/classic.out"
    fi
    [ $SECONDS -lt $deadline ] || { tail -30 "$dir/classic.out" >&2; stop_pid "$dir/classic.pid" activemq-classic; die "activemq-classic not started within 180 s"; }
    sleep 0.1
  done
  wait_for "activemq-classic AMQP round trip" 120 classic_ready "$dir" \
    || { tail -20 "$dir/ready.log" >&2; stop_pid "$dir/classic.pid" activemq-classic; die "activemq-classic started but an AMQP round trip failed"; }
  wait_for "activemq-classic TLS transport" 30 classic_tls_ready "$dir" \
    || { stop_pid "$dir/classic.pid" activemq-classic; die "activemq-classic started but its TLS transport on 127.0.0.1:$CLASSIC_TLS_PORT does not complete a verified handshake"; }
  log "activemq-classic ready on 127.0.0.1:$CLASSIC_PORT, TLS on $CLASSIC_TLS_PORT (pid $(cat "$dir/classic.pid"))"
  classic_env "$dir"
}

# activemq-classic_down DIR: stop the broker and remove its data, so that the
# next up starts from a fresh broker state.
activemq-classic_down() {
  stop_pid "$1/classic.pid" activemq-classic
  rm -rf "$1/data" "$1/tls"
}
