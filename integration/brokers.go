// Package integration finds a real broker for a test: an environment
// variable set by `scripts/brokers up`, by `go run ./integration/containers`
// (testcontainers-go, where a Docker engine is healthy) or by hand; otherwise
// a loud t.Skip naming the variable and the command that would run the test.
// Under CI=true a missing broker fails the test instead: CI must never count
// a skipped broker test as passing.
package integration

import (
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
)

// Environment variables the tests read (printed by scripts/brokers up).
const (
	EnvKafka    = "OMNIBUS_KAFKA_BROKERS" // host:port[,host:port]
	EnvAMQP     = "OMNIBUS_AMQP_URL"      // amqp://user:pass@host:port/vhost
	EnvPostgres = "OMNIBUS_POSTGRES_URL"  // postgres://user@host:port/db

	// The Kafka broker of scripts/brokers also has a SASL_PLAINTEXT listener
	// (PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for one throwaway user), an
	// SSL listener that requires a client certificate signed by its CA, and
	// a SASL_SSL listener (the same mechanisms and user over TLS with the
	// same server certificate, no client certificate).
	EnvKafkaSASL         = "OMNIBUS_KAFKA_SASL_BROKERS"     // host:port of the SASL_PLAINTEXT listener
	EnvKafkaSASLUser     = "OMNIBUS_KAFKA_SASL_USER"        // its user, for every mechanism
	EnvKafkaSASLPassword = "OMNIBUS_KAFKA_SASL_PASSWORD"    // that user's password
	EnvKafkaTLS          = "OMNIBUS_KAFKA_TLS_BROKERS"      // host:port of the SSL listener
	EnvKafkaTLSCA        = "OMNIBUS_KAFKA_TLS_CA"           // PEM CA that signed the server and client certificates
	EnvKafkaTLSCert      = "OMNIBUS_KAFKA_TLS_CERT"         // PEM client certificate
	EnvKafkaTLSKey       = "OMNIBUS_KAFKA_TLS_KEY"          // PEM client key
	EnvKafkaSASLSSL      = "OMNIBUS_KAFKA_SASL_SSL_BROKERS" // host:port of the SASL_SSL listener

	// The RabbitMQ node of scripts/brokers also listens for AMQP over TLS,
	// with a certificate signed by a throwaway CA. It asks for a client
	// certificate and verifies one when given, but does not require one.
	EnvAMQPS     = "OMNIBUS_AMQPS_URL"  // amqps://user:pass@host:port/vhost
	EnvAMQPSCA   = "OMNIBUS_AMQPS_CA"   // PEM CA that signed the server and client certificates
	EnvAMQPSCert = "OMNIBUS_AMQPS_CERT" // PEM client certificate
	EnvAMQPSKey  = "OMNIBUS_AMQPS_KEY"  // PEM client key

	// The three-node RabbitMQ cluster of `scripts/brokers up
	// rabbitmq-cluster` (quorum queues with a member on each node).
	EnvAMQPClusterURLs = "OMNIBUS_AMQP_CLUSTER_URLS" // amqp:// URL of each node, comma-separated
	EnvAMQPClusterCtl  = "OMNIBUS_AMQP_CLUSTER_CTL"  // ctl: kill N, start N, leader QUEUE, ctl N ARGS

	// ActiveMQ Artemis of scripts/brokers: AMQP 1.0, plain and over TLS
	// (a certificate signed by a throwaway CA), its CLI and its pidfile
	// (for the broker restart tests).
	EnvActiveMQ        = "OMNIBUS_ACTIVEMQ_URL"     // activemq://user:pass@host:port
	EnvActiveMQS       = "OMNIBUS_ACTIVEMQS_URL"    // activemqs://user:pass@host:port
	EnvActiveMQCA      = "OMNIBUS_ACTIVEMQ_CA"      // PEM CA that signed the TLS acceptor's certificate
	EnvActiveMQCLI     = "OMNIBUS_ACTIVEMQ_CLI"     // the broker instance's bin/artemis
	EnvActiveMQPidfile = "OMNIBUS_ACTIVEMQ_PIDFILE" // pidfile of the broker's JVM
	// ActiveMQ Classic of scripts/brokers: AMQP 1.0, plain and over TLS (a
	// certificate signed by a throwaway CA), and its JVM's pidfile.
	EnvActiveMQClassic        = "OMNIBUS_ACTIVEMQ_CLASSIC_URL"     // activemq://user:pass@host:port?flavor=classic
	EnvActiveMQClassicTLS     = "OMNIBUS_ACTIVEMQ_CLASSIC_TLS_URL" // activemqs://user:pass@host:port?flavor=classic
	EnvActiveMQClassicCA      = "OMNIBUS_ACTIVEMQ_CLASSIC_CA"      // PEM CA that signed the TLS transport's certificate
	EnvActiveMQClassicPidfile = "OMNIBUS_ACTIVEMQ_CLASSIC_PIDFILE" // pidfile of the broker's JVM
)

// ActiveMQ returns an activemq:// URL of the test ActiveMQ Artemis broker.
// Only `scripts/brokers up activemq` (or the variable set by hand) provides
// one: there is no container fallback.
func ActiveMQ(t testing.TB) string {
	t.Helper()
	return fromEnv(t, "activemq broker", "activemq", EnvActiveMQ)[0]
}

// ActiveMQS returns an activemqs:// URL of the TLS acceptor of the test
// ActiveMQ Artemis broker and the CA file that signed its certificate.
func ActiveMQS(t testing.TB) (url, caFile string) {
	t.Helper()
	v := fromEnv(t, "activemq TLS acceptor", "activemq", EnvActiveMQS, EnvActiveMQCA)
	return v[0], v[1]
}

// ActiveMQControl returns the test ActiveMQ Artemis broker's CLI
// (bin/artemis of its instance) and the pidfile of its JVM, for tests that
// inspect queues or kill and restart the broker.
func ActiveMQControl(t testing.TB) (cli, pidfile string) {
	t.Helper()
	v := fromEnv(t, "activemq broker control", "activemq", EnvActiveMQCLI, EnvActiveMQPidfile)
	return v[0], v[1]
}

// ActiveMQClassic returns an activemq://...?flavor=classic URL of the test
// ActiveMQ Classic broker. Only `scripts/brokers up activemq-classic` (or the
// variable set by hand) provides one: there is no container fallback.
func ActiveMQClassic(t testing.TB) string {
	t.Helper()
	return fromEnv(t, "activemq-classic broker", "activemq-classic", EnvActiveMQClassic)[0]
}

// ActiveMQClassicTLS returns an activemqs://...?flavor=classic URL of the
// TLS transport of the test ActiveMQ Classic broker and the CA file that
// signed its certificate.
func ActiveMQClassicTLS(t testing.TB) (url, caFile string) {
	t.Helper()
	v := fromEnv(t, "activemq-classic TLS transport", "activemq-classic", EnvActiveMQClassicTLS, EnvActiveMQClassicCA)
	return v[0], v[1]
}

// ActiveMQClassicPidfile returns the pidfile of the test ActiveMQ Classic
// broker's JVM, for tests that kill and restart the broker.
func ActiveMQClassicPidfile(t testing.TB) string {
	t.Helper()
	return fromEnv(t, "activemq-classic broker control", "activemq-classic", EnvActiveMQClassicPidfile)[0]
}

// Kafka returns a comma-separated list of Kafka bootstrap brokers.
func Kafka(t testing.TB) string { return find(t, "kafka", EnvKafka) }

// KafkaSASL returns the SASL_PLAINTEXT listener of the test Kafka broker and
// the user and password it accepts with PLAIN, SCRAM-SHA-256 and
// SCRAM-SHA-512. Only `scripts/brokers up kafka` (or the variables set by
// hand) provides one: there is no container fallback.
func KafkaSASL(t testing.TB) (brokers, user, password string) {
	t.Helper()
	v := fromEnv(t, "kafka SASL listener", "kafka", EnvKafkaSASL, EnvKafkaSASLUser, EnvKafkaSASLPassword)
	return v[0], v[1], v[2]
}

// KafkaTLS returns the SSL listener of the test Kafka broker, the CA file
// that signed its certificate, and a client certificate and key it accepts
// (the listener requires one). Only `scripts/brokers up kafka` (or the
// variables set by hand) provides one: there is no container fallback.
func KafkaTLS(t testing.TB) (brokers, caFile, certFile, keyFile string) {
	t.Helper()
	v := fromEnv(t, "kafka TLS listener", "kafka", EnvKafkaTLS, EnvKafkaTLSCA, EnvKafkaTLSCert, EnvKafkaTLSKey)
	return v[0], v[1], v[2], v[3]
}

// KafkaSASLSSL returns the SASL_SSL listener of the test Kafka broker, the
// CA file that signed its certificate, and the user and password it accepts
// with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (no client certificate
// needed). Only `scripts/brokers up kafka` (or the variables set by hand)
// provides one: there is no container fallback.
func KafkaSASLSSL(t testing.TB) (brokers, caFile, user, password string) {
	t.Helper()
	v := fromEnv(t, "kafka SASL_SSL listener", "kafka", EnvKafkaSASLSSL, EnvKafkaTLSCA, EnvKafkaSASLUser, EnvKafkaSASLPassword)
	return v[0], v[1], v[2], v[3]
}

// AMQPS returns an amqps:// URL of the TLS listener of the test RabbitMQ
// node, the CA file that signed its certificate, and a client certificate
// and key it accepts (it does not require one). Only `scripts/brokers up
// rabbitmq` (or the variables set by hand) provides one: there is no
// container fallback.
func AMQPS(t testing.TB) (url, caFile, certFile, keyFile string) {
	t.Helper()
	v := fromEnv(t, "rabbitmq TLS listener", "rabbitmq", EnvAMQPS, EnvAMQPSCA, EnvAMQPSCert, EnvAMQPSKey)
	return v[0], v[1], v[2], v[3]
}

// AMQPCluster returns the amqp:// URL of each node of the test RabbitMQ
// cluster and the path of its ctl program (kill N, start N, leader QUEUE).
// Only `scripts/brokers up rabbitmq-cluster` (or the variables set by hand)
// provides one: there is no container fallback.
func AMQPCluster(t testing.TB) (urls []string, ctl string) {
	t.Helper()
	v := fromEnv(t, "rabbitmq cluster", "rabbitmq-cluster", EnvAMQPClusterURLs, EnvAMQPClusterCtl)
	return strings.Split(v[0], ","), v[1]
}

// fromEnv returns the values of envs, all of which must be set; otherwise
// it skips the test loudly (fails it under CI=true).
func fromEnv(t testing.TB, what, broker string, envs ...string) []string {
	t.Helper()
	var vals, unset []string
	for _, e := range envs {
		v := os.Getenv(e)
		if v == "" {
			unset = append(unset, e)
		}
		vals = append(vals, v)
	}
	if len(unset) > 0 {
		missing(t, fmt.Sprintf("no %s: set %s, or run `eval \"$(scripts/brokers up %s)\"` first (no container fallback for this one)",
			what, strings.Join(unset, ", "), broker))
	}
	return vals
}

// missing fails the test under CI=true and skips it loudly otherwise.
func missing(t testing.TB, msg string) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=true and %s", msg)
	}
	t.Skip("SKIPPED, " + msg)
}

// AMQP returns an amqp:// URL of a RabbitMQ broker.
func AMQP(t testing.TB) string { return find(t, "rabbitmq", EnvAMQP) }

// Postgres returns a postgres:// URL of a database the test may write to.
func Postgres(t testing.TB) string { return find(t, "postgres", EnvPostgres) }

// InCI reports whether CI=true, where a missing broker is a failure.
func InCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v == "true" || v == "1"
}

func find(t testing.TB, name, env string) string {
	t.Helper()
	if v := os.Getenv(env); v != "" {
		return v
	}
	missing(t, fmt.Sprintf("no %s broker: run the suite with `scripts/test`, or set %s (`eval \"$(scripts/brokers up %s)\"`, or `go run ./integration/containers` where Docker works)",
		name, env, name))
	return ""
}

// EnvNSQ is the nsq:// URL of the test nsqd (with its lookupd), set by
// `scripts/brokers up nsq`.
const EnvNSQ = "OMNIBUS_NSQ_URL"

// NSQ returns the nsq:// URL of the test nsqd. Only `scripts/brokers up
// nsq` (or the variable set by hand) provides one: there is no container
// fallback.
func NSQ(t testing.TB) string {
	t.Helper()
	return fromEnv(t, "nsq broker", "nsq", EnvNSQ)[0]
}

// RocketMQ of scripts/brokers: a name server and one broker, and a ctl for
// the broker restart tests.
const (
	EnvRocketMQ    = "OMNIBUS_ROCKETMQ_URL" // rocketmq://namesrv:port?brokers=broker:port
	EnvRocketMQCtl = "OMNIBUS_ROCKETMQ_CTL" // ctl: kill (SIGKILL the broker), start, ready
)

// RocketMQ returns a rocketmq:// URL of the test RocketMQ name server and
// broker. Only `scripts/brokers up rocketmq` (or the variable set by hand)
// provides one.
func RocketMQ(t testing.TB) string { return fromEnv(t, "rocketmq broker", "rocketmq", EnvRocketMQ)[0] }

// RocketMQControl returns the ctl of the test RocketMQ broker.
func RocketMQControl(t testing.TB) string {
	return fromEnv(t, "rocketmq broker control", "rocketmq", EnvRocketMQCtl)[0]
}

// SilentListener listens on a free port of 127.0.0.1, accepts every
// connection and never sends a byte (a hung server, a port of another
// protocol, a black-holing proxy), for the tests that prove every network
// wait has a timeout. It returns host:port; listener and connections are
// closed when the test ends.
func SilentListener(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("silent listener: %v", err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}
