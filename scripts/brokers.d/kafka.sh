# Apache Kafka 4.x (KRaft, one combined broker+controller node) from Maven
# Central jars, on 127.0.0.1:19092 (controller 19093), with two more listeners
# for the security tests: SASL_PLAINTEXT on 19094 (PLAIN, SCRAM-SHA-256,
# SCRAM-SHA-512) and SSL on 19095 (a throwaway CA generated here, client
# certificate required). Sourced by scripts/brokers; see the contract there.
#
# The broker's classpath is resolved by Maven from scripts/kafka/pom.xml into
# a cache outside the work tree ($OMNIBUS_KAFKA_LIB, default
# ~/.cache/omnibus/kafka-<version>/lib), so later runs and fresh clones on the
# same machine skip the download. Data and logs live in the state dir and are
# wiped on every fresh start.
KAFKA_PORT=${OMNIBUS_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${OMNIBUS_KAFKA_CONTROLLER_PORT:-19093}
KAFKA_SASL_PORT=${OMNIBUS_KAFKA_SASL_PORT:-19094}
KAFKA_SSL_PORT=${OMNIBUS_KAFKA_SSL_PORT:-19095}
# Throwaway credentials of the test broker's SASL listener, for every
# mechanism (PLAIN in the JAAS config, SCRAM written at format time). They are
# exported in the env file; nothing else uses them.
KAFKA_SASL_USER=omnibus
KAFKA_SASL_PASSWORD=omnibus-test-secret-4d1c
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

# kafka_ready DIR TIMEOUT: a metadata request answers with a broker and a
# controller on every listener: PLAINTEXT, SASL_PLAINTEXT with each mechanism,
# and SSL with the client certificate.
kafka_ready() {
  KAFKAREADY_SASL_PASSWORD=$KAFKA_SASL_PASSWORD "$1/bin/kafkaready" -timeout "$2" \
    -brokers "127.0.0.1:$KAFKA_PORT" \
    -sasl-brokers "127.0.0.1:$KAFKA_SASL_PORT" -sasl plain,scram-sha-256,scram-sha-512 -sasl-user "$KAFKA_SASL_USER" \
    -tls-brokers "127.0.0.1:$KAFKA_SSL_PORT" -tls-ca "$1/tls/ca.pem" -tls-cert "$1/tls/client-cert.pem" -tls-key "$1/tls/client-key.pem" \
    2>>"$1/ready.log"
}

# kafka_config DIR OUT: render server.properties for DIR into OUT.
kafka_config() {
  sed -e "s|@PORT@|$KAFKA_PORT|g" -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
    -e "s|@SASL_PORT@|$KAFKA_SASL_PORT|g" -e "s|@SSL_PORT@|$KAFKA_SSL_PORT|g" \
    -e "s|@SASL_USER@|$KAFKA_SASL_USER|g" -e "s|@SASL_PASSWORD@|$KAFKA_SASL_PASSWORD|g" \
    -e "s|@TLS@|$1/tls|g" -e "s|@DATA@|$1/data|g" \
    "$KAFKA_SRC/server.properties.in" >"$2"
}

# kafka_tls DIR: a fresh throwaway CA in DIR/tls, a server certificate for
# 127.0.0.1/localhost (server.pem: key + certificate, the broker's PEM
# keystore) and a client certificate, all signed by it. EC P-256 keys,
# unencrypted PKCS#8.
kafka_tls() {
  local t=$1/tls
  command -v openssl >/dev/null || apt_install openssl
  rm -rf "$t"
  mkdir -p "$t"
  (
    set -e
    cd "$t"
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
    key ca-key.pem
    openssl req -x509 -new -key ca-key.pem -out ca.pem -days 3650 -subj "/CN=omnibus test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >server.ext
    printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' >client.ext
    for n in server client; do
      key "$n-key.pem"
      openssl req -new -key "$n-key.pem" -out "$n.csr" -subj "/CN=omnibus-test-$n"
      openssl x509 -req -in "$n.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
        -extfile "$n.ext" -out "$n-cert.pem"
    done
    cat server-key.pem server-cert.pem >server.pem
  ) >"$1/openssl.log" 2>&1 || { cat "$1/openssl.log" >&2; die "cannot generate the test TLS certificates in $t"; }
}

kafka_up() {
  local dir=$1 lib deadline
  dir=$(cd "$dir" && pwd)
  kafka_install
  lib=$(kafka_lib)
  mkdir -p "$dir/bin"
  (cd "$ROOT" && go build -o "$dir/bin/kafkaready" ./integration/cmd/kafkaready) || die "cannot build integration/cmd/kafkaready"
  kafka_config "$dir" "$dir/server.properties.want"
  # A running broker is kept only if it runs this very configuration (a
  # changed template or port restarts it) and every listener answers.
  if kafka_running "$dir" && cmp -s "$dir/server.properties" "$dir/server.properties.want" && kafka_ready "$dir" 10s; then
    log "kafka already running on 127.0.0.1:$KAFKA_PORT (pid $(cat "$dir/kafka.pid"))"
  else
    kafka_down "$dir"
    rm -rf "$dir/data" "$dir/logs" "$dir/ready.log"
    mkdir -p "$dir/data" "$dir/logs"
    mv "$dir/server.properties.want" "$dir/server.properties"
    kafka_tls "$dir"
    log "formatting KRaft storage in $dir/data (SCRAM credentials for $KAFKA_SASL_USER)"
    java -Xmx256m -Dkafka.logs.dir="$dir/logs" -Dlog4j2.configurationFile="$KAFKA_SRC/log4j2.properties" \
      -cp "$lib/*" kafka.tools.StorageTool format --cluster-id "$KAFKA_CLUSTER_ID" \
      --config "$dir/server.properties" \
      --add-scram "SCRAM-SHA-256=[name=$KAFKA_SASL_USER,password=$KAFKA_SASL_PASSWORD]" \
      --add-scram "SCRAM-SHA-512=[name=$KAFKA_SASL_USER,password=$KAFKA_SASL_PASSWORD]" \
      >"$dir/format.log" 2>&1 \
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
    log "kafka ready on 127.0.0.1:$KAFKA_PORT, SASL on $KAFKA_SASL_PORT, SSL on $KAFKA_SSL_PORT (pid $(cat "$dir/kafka.pid"))"
  fi
  rm -f "$dir/server.properties.want"
  {
    echo "export OMNIBUS_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
    echo "export OMNIBUS_KAFKA_SASL_BROKERS=127.0.0.1:$KAFKA_SASL_PORT"
    echo "export OMNIBUS_KAFKA_SASL_USER=$KAFKA_SASL_USER"
    echo "export OMNIBUS_KAFKA_SASL_PASSWORD=$KAFKA_SASL_PASSWORD"
    echo "export OMNIBUS_KAFKA_TLS_BROKERS=127.0.0.1:$KAFKA_SSL_PORT"
    printf 'export OMNIBUS_KAFKA_TLS_CA=%q\n' "$dir/tls/ca.pem"
    printf 'export OMNIBUS_KAFKA_TLS_CERT=%q\n' "$dir/tls/client-cert.pem"
    printf 'export OMNIBUS_KAFKA_TLS_KEY=%q\n' "$dir/tls/client-key.pem"
  } >"$dir/env"
}

kafka_down() {
  local dir=$1
  stop_pid "$dir/kafka.pid" kafka
}
