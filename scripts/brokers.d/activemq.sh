# ActiveMQ Artemis 2.40.0 from the Maven Central bin tarball, one broker on
# 127.0.0.1:17672 (one acceptor for AMQP 1.0 and the broker's other protocols)
# and AMQP over TLS on 127.0.0.1:17674, no web console. Sourced by
# scripts/brokers; see the contract there.
#
# The tarball is fetched by Maven into a cache outside the work tree
# ($OMNIBUS_ARTEMIS_HOME, default ~/.cache/omnibus/artemis-<version>), so later
# runs and fresh clones on the same machine skip the download. The broker
# instance (etc/, bin/, log/) and its journal live in the state dir and are
# created anew on every fresh start.
#
# broker.xml's catch-all address setting gets the redelivery and dead-letter
# settings the adapter documents: redelivery-delay 0 (a Modified disposition
# is redelivered at once), max-delivery-attempts 10, dead-letter address DLQ
# with auto-created dead-letter queues prefixed "DLQ.", and auto-delete-queues
# false (a group's queue outlives its consumers).
#
# The TLS acceptor's certificate is signed by a throwaway CA that test_certs
# (scripts/brokers) generates in DIR/tls on every fresh start; DIR/env exports
# its URL (OMNIBUS_ACTIVEMQS_URL) and the CA (OMNIBUS_ACTIVEMQ_CA). It exports
# DIR/instance/bin/artemis as OMNIBUS_ACTIVEMQ_CLI and the broker's pidfile as
# OMNIBUS_ACTIVEMQ_PIDFILE, so that tests can inspect queues and restart the
# broker (scripts/brokers up activemq starts it again on the same journal).
ARTEMIS_VERSION=2.40.0
ARTEMIS_PORT=${OMNIBUS_ACTIVEMQ_PORT:-17672}
ARTEMIS_TLS_PORT=$((ARTEMIS_PORT + 2))
# Throwaway credentials of the test broker (also its keystore password).
ARTEMIS_USER=omnibus
ARTEMIS_PASSWORD=omnibus-test-secret-7a2f

artemis_home() { echo "${OMNIBUS_ARTEMIS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/omnibus/artemis-$ARTEMIS_VERSION}"; }

# artemis_install: make sure java, Maven and the unpacked distribution exist.
artemis_install() {
  local home tmp
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  home=$(artemis_home)
  [ -x "$home/bin/artemis" ] && [ -f "$home/.complete" ] && return 0
  command -v mvn >/dev/null || apt_install maven
  log "downloading ActiveMQ Artemis $ARTEMIS_VERSION from Maven Central into $home"
  tmp="$home.download"
  rm -rf "$home" "$tmp"
  mkdir -p "$tmp"
  mvn -q -B dependency:copy -Dartifact="org.apache.activemq:apache-artemis:$ARTEMIS_VERSION:tar.gz:bin" \
    -DoutputDirectory="$tmp" >"$tmp/maven.log" 2>&1 \
    || { tail -30 "$tmp/maven.log" >&2; die "maven could not fetch the Artemis tarball (log: $tmp/maven.log)"; }
  tar -xzf "$tmp/apache-artemis-$ARTEMIS_VERSION-bin.tar.gz" -C "$tmp" || die "cannot unpack the Artemis tarball"
  mv "$tmp/apache-artemis-$ARTEMIS_VERSION" "$home"
  rm -rf "$tmp"
  [ -x "$home/bin/artemis" ] || die "$home/bin/artemis missing after unpacking"
  touch "$home/.complete"
}

artemis_running() { pid_alive "$1/artemis.pid"; }

# artemis_ready DIR: a real AMQP round trip: one durable message sent to a
# queue and received back, through the broker's own CLI.
artemis_ready() {
  local cli=$1/instance/bin/artemis url=amqp://127.0.0.1:$ARTEMIS_PORT
  timeout 60 "$cli" producer --protocol amqp --url "$url" --user "$ARTEMIS_USER" --password "$ARTEMIS_PASSWORD" \
    --destination queue://omnibus.ready --message-count 1 --silent >>"$1/ready.log" 2>&1 || return 1
  timeout 60 "$cli" consumer --protocol amqp --url "$url" --user "$ARTEMIS_USER" --password "$ARTEMIS_PASSWORD" \
    --destination queue://omnibus.ready --message-count 1 --receive-timeout 10000 --break-on-null --silent \
    >"$1/ready.out" 2>&1 || { cat "$1/ready.out" >>"$1/ready.log"; return 1; }
  cat "$1/ready.out" >>"$1/ready.log"
  grep -q 'Consumed: 1 messages' "$1/ready.out"
}

# artemis_tls_ready DIR: a TLS handshake with the TLS acceptor verifies its
# certificate for 127.0.0.1 against DIR/tls/ca.pem.
artemis_tls_ready() {
  [ -s "$1/tls/ca.pem" ] || return 1
  timeout 10 openssl s_client -connect "127.0.0.1:$ARTEMIS_TLS_PORT" -verify_return_error -verify_ip 127.0.0.1 \
    -CAfile "$1/tls/ca.pem" </dev/null
}

# artemis_settings: the lines added to the catch-all address setting.
artemis_settings() {
  cat <<'XML'
            <max-delivery-attempts>10</max-delivery-attempts>
            <auto-create-dead-letter-resources>true</auto-create-dead-letter-resources>
            <dead-letter-queue-prefix>DLQ.</dead-letter-queue-prefix>
XML
}

# artemis_create DIR: a fresh broker instance in DIR/instance, journal in
# DIR/data, a PKCS#12 keystore for the TLS acceptor in DIR/tls.
artemis_create() {
  local dir=$1 home xml
  home=$(artemis_home)
  rm -rf "$dir/instance" "$dir/data" "$dir/ready.log"
  test_certs "$dir"
  openssl pkcs12 -export -in "$dir/tls/server-cert.pem" -inkey "$dir/tls/server-key.pem" -name omnibus \
    -out "$dir/tls/server.p12" -passout "pass:$ARTEMIS_PASSWORD" >>"$dir/openssl.log" 2>&1 \
    || die "cannot write the Artemis TLS keystore"
  log "creating the Artemis instance in $dir/instance"
  "$home/bin/artemis" create --silent --force --user "$ARTEMIS_USER" --password "$ARTEMIS_PASSWORD" --require-login \
    --host 127.0.0.1 --default-port "$ARTEMIS_PORT" --no-amqp-acceptor --no-stomp-acceptor --no-mqtt-acceptor \
    --no-hornetq-acceptor --no-web --java-memory 384M --nio --data "$dir/data" "$dir/instance" >"$dir/create.log" 2>&1 \
    || { tail -20 "$dir/create.log" >&2; die "artemis create failed"; }
  # A small heap: 128 MB at start, at most 512 MB.
  sed -i -E 's/-Xms[0-9]+[MmGg]/-Xms128M/; s/-Xmx[0-9]+[MmGg]/-Xmx512M/' "$dir/instance/etc/artemis.profile"
  grep -q -- '-Xms128M' "$dir/instance/etc/artemis.profile" || die "artemis.profile: cannot set the heap size"
  xml=$dir/instance/etc/broker.xml
  # The catch-all address setting: the settings above, a group queue that
  # outlives its consumers, and a second acceptor for AMQP over TLS.
  awk -v settings="$(artemis_settings)" \
      -v tls="         <acceptor name=\"amqps\">tcp://127.0.0.1:$ARTEMIS_TLS_PORT?sslEnabled=true;keyStorePath=$dir/tls/server.p12;keyStoreType=PKCS12;keyStorePassword=$ARTEMIS_PASSWORD;protocols=AMQP;useEpoll=true</acceptor>" '
    /<address-setting match="#">/ { print; print settings; next }
    /<\/acceptors>/ { print tls }
    { print }' "$xml" >"$xml.new" && mv "$xml.new" "$xml"
  grep -q '<auto-delete-queues>false</auto-delete-queues>' "$xml" || die "broker.xml: expected auto-delete-queues false in the catch-all setting"
  grep -q 'name="amqps"' "$xml" || die "broker.xml: the TLS acceptor was not added"
}

artemis_env() {
  local dir=$1
  {
    echo "export OMNIBUS_ACTIVEMQ_URL=activemq://$ARTEMIS_USER:$ARTEMIS_PASSWORD@127.0.0.1:$ARTEMIS_PORT"
    echo "export OMNIBUS_ACTIVEMQS_URL=activemqs://$ARTEMIS_USER:$ARTEMIS_PASSWORD@127.0.0.1:$ARTEMIS_TLS_PORT"
    printf 'export OMNIBUS_ACTIVEMQ_CA=%q\n' "$dir/tls/ca.pem"
    printf 'export OMNIBUS_ACTIVEMQ_CLI=%q\n' "$dir/instance/bin/artemis"
    printf 'export OMNIBUS_ACTIVEMQ_PIDFILE=%q\n' "$dir/artemis.pid"
  } >"$dir/env"
}

activemq_running() { artemis_running "$1"; }

activemq_up() {
  local dir=$1 deadline
  dir=$(cd "$dir" && pwd)
  artemis_install
  if artemis_running "$dir" && artemis_ready "$dir" && artemis_tls_ready "$dir" >/dev/null 2>&1; then
    log "activemq (artemis) already running on 127.0.0.1:$ARTEMIS_PORT (pid $(cat "$dir/artemis.pid"))"
    artemis_env "$dir"
    return 0
  fi
  artemis_down "$dir"
  # A broker that was stopped (or killed) keeps its journal: a restart
  # recovers it. A missing instance is created anew.
  [ -x "$dir/instance/bin/artemis" ] && [ -s "$dir/tls/server.p12" ] || artemis_create "$dir"
  log "starting activemq (artemis) on 127.0.0.1:$ARTEMIS_PORT, TLS on $ARTEMIS_TLS_PORT"
  # setsid: the broker outlives this script; bin/artemis execs java, so the
  # pidfile names the JVM itself.
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/artemis.pid" \
    "$dir/instance/bin/artemis" run </dev/null >"$dir/artemis.out" 2>&1 &
  deadline=$((SECONDS + 180))
  until [ -s "$dir/artemis.pid" ] && grep -qs AMQ221007 "$dir/artemis.out"; do
    if [ -s "$dir/artemis.pid" ] && ! artemis_running "$dir"; then
      tail -30 "$dir/artemis.out" >&2
      rm -f "$dir/artemis.pid"
      die "artemis exited during start; see $dir/artemis.out"
    fi
    [ $SECONDS -lt $deadline ] || { tail -30 "$dir/artemis.out" >&2; artemis_down "$dir"; die "artemis not active within 180 s"; }
    sleep 0.2
  done
  wait_for "artemis AMQP round trip" 120 artemis_ready "$dir" \
    || { tail -20 "$dir/ready.log" >&2; artemis_down "$dir"; die "artemis is active but an AMQP round trip failed"; }
  wait_for "artemis TLS acceptor" 30 artemis_tls_ready "$dir" \
    || { artemis_down "$dir"; die "artemis started but its TLS acceptor on 127.0.0.1:$ARTEMIS_TLS_PORT does not complete a verified handshake"; }
  log "activemq (artemis) ready on 127.0.0.1:$ARTEMIS_PORT, TLS on $ARTEMIS_TLS_PORT (pid $(cat "$dir/artemis.pid"))"
  artemis_env "$dir"
}

artemis_down() { stop_pid "$1/artemis.pid" artemis; }

# activemq_down DIR: stop the broker and remove its instance and journal, so
# that the next up starts from a fresh broker state. (A broker that died
# without down, e.g. SIGKILLed by a test, is restarted by up on its journal.)
activemq_down() {
  artemis_down "$1"
  rm -rf "$1/instance" "$1/data"
}
