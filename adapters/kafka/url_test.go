package kafka_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/kafka"
	"github.com/omnibusmq/omnibus/pubsub"
)

func TestParseURLReadsEveryParameter(t *testing.T) {
	o, err := kafka.ParseURL("kafka://a:9092,b:9093/?client_id=svc&acks=leader&compression=zstd&auto_create=true&partitions=6" +
		"&replication_factor=3&start=earliest&max_message_size=2048&commit_interval=1s&session_timeout=20s" +
		"&heartbeat_interval=2s&rebalance_timeout=40s&write_timeout=5s&dial_timeout=3s&max_batch=100&max_in_flight=2&fetch_max_bytes=65536" +
		"&sasl=scram-sha-512&sasl_user=u&sasl_password=p")
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"Brokers", strings.Join(o.Brokers, ","), "a:9092,b:9093"},
		{"ClientID", o.ClientID, "svc"},
		{"Acks", o.Acks, kafka.AcksLeader},
		{"Compression", o.Compression, "zstd"},
		{"AutoCreate", o.AutoCreate, true},
		{"Partitions", o.Partitions, 6},
		{"ReplicationFactor", o.ReplicationFactor, 3},
		{"StartFromOldest", o.StartFromOldest, true},
		{"MaxMessageSize", o.MaxMessageSize, 2048},
		{"CommitInterval", o.CommitInterval, time.Second},
		{"SessionTimeout", o.SessionTimeout, 20 * time.Second},
		{"HeartbeatInterval", o.HeartbeatInterval, 2 * time.Second},
		{"RebalanceTimeout", o.RebalanceTimeout, 40 * time.Second},
		{"WriteTimeout", o.WriteTimeout, 5 * time.Second},
		{"DialTimeout", o.DialTimeout, 3 * time.Second},
		{"MaxBatch", o.MaxBatch, 100},
		{"MaxInFlight", o.MaxInFlight, 2},
		{"FetchMaxBytes", o.FetchMaxBytes, 65536},
		{"SASL", o.SASL != nil && o.SASL.Name() == "SCRAM-SHA-512", true},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestParseURLDefaultsPortAndAcceptsUserInfoForSASL(t *testing.T) {
	o, err := kafka.ParseURL("kafka://alice:s3cr%40t@host1,host2:19092?sasl=plain")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(o.Brokers, ","); got != "host1:9092,host2:19092" {
		t.Errorf("Brokers = %s, want host1:9092,host2:19092", got)
	}
	if o.SASL == nil || o.SASL.Name() != "PLAIN" {
		t.Errorf("SASL = %v, want PLAIN", o.SASL)
	}
}

func TestParseURLRejectsBadInputNamingTheParameter(t *testing.T) {
	cases := []struct {
		name, url, mention string
	}{
		{"UnknownParameter", "kafka://h:1?partitons=3", "partitons"},
		{"BadAcks", "kafka://h:1?acks=al", "acks"},
		{"BadCompression", "kafka://h:1?compression=brotli", "compression"},
		{"BadStart", "kafka://h:1?start=oldest", "start"},
		{"ZeroPartitions", "kafka://h:1?partitions=0", "partitions"},
		{"BadDuration", "kafka://h:1?commit_interval=soon", "commit_interval"},
		{"BadSASL", "kafka://h:1?sasl=gssapi&sasl_user=u", "sasl"},
		{"SASLWithoutUser", "kafka://h:1?sasl=plain", "sasl_user"},
		{"CredentialsWithoutMechanism", "kafka://u:p@h:1", "sasl="},
		{"MissingCAFile", "kafka://h:1?tls_ca=/nonexistent/ca.pem", "tls_ca"},
		{"CertWithoutKey", "kafka://h:1?tls_cert=/x.pem", "tls_key"},
		{"NoHost", "kafka://?acks=all", "broker"},
		{"BadPort", "kafka://h:port", "port"},
		{"WrongScheme", "amqp://h:1", "kafka://"},
		{"HeartbeatNotBelowSession", "kafka://h:1?heartbeat_interval=10s&session_timeout=5s", "HeartbeatInterval"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := kafka.ParseURL(tc.url)
			if err == nil {
				_, err = kafka.New(context.Background(), o)
			}
			if !errors.Is(err, pubsub.ErrInvalid) {
				t.Fatalf("%s: %v, want ErrInvalid", tc.url, err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestCredentialsNeverAppearInErrors(t *testing.T) {
	const secret = "hunter2-very-secret"
	urls := []string{
		"kafka://127.0.0.1:1?dial_timeout=500ms&sasl=plain&sasl_user=bob&sasl_password=" + secret,
		"kafka://bob:" + secret + "@127.0.0.1:1?dial_timeout=500ms&sasl=scram-sha-256",
		"kafka://bob:" + secret + "@127.0.0.1:1?dial_timeout=500ms&sasl=scram-sha-256&bogus=1",
		"kafka://bob:" + secret + "@127.0.0.1:1?dial_timeout=500ms",
	}
	for _, u := range urls {
		_, err := pubsub.Open(context.Background(), u)
		if err == nil {
			t.Fatalf("open %s: no error, want a connection or parameter error", pubsub.Redact(u))
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error leaks the password: %v", err)
		}
	}
}
