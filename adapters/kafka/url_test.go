package kafka_test

import (
	"context"
	"errors"
	"net/url"
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
		"&balancer=range&sasl=scram-sha-512&sasl_user=u&sasl_password=p")
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
		{"Balancer", o.Balancer, kafka.BalancerRange},
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
		{"BadBalancer", "kafka://h:1?balancer=sticky", "balancer"},
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
				_, err = kafka.Dial(context.Background(), o)
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

// TestParseURLNeverPrintsThePassword: whatever the URL's shape (a password
// with "?", "#", "/" or a space that was not percent-encoded, a trailing
// CR from a .env file, non-ASCII, a misspelled secret parameter), no error
// of ParseURL contains the password.
func TestParseURLNeverPrintsThePassword(t *testing.T) {
	const secret = "S3CRETpw"
	cases := []struct{ name, url string }{
		{"QuestionMarkInPassword", "kafka://alice:" + secret + "?x@h:9092"},
		{"QuestionMarkAndBadPort", "kafka://alice:" + secret + "?x@h:port"},
		{"HashInPassword", "kafka://alice:" + secret + "#x@h:notaport"},
		{"SlashInPassword", "kafka://alice:" + secret + "/x@h:9092"},
		{"TrailingCR", "kafka://alice:" + secret + "@h:9092\r"},
		{"CRBeforeQuery", "kafka://alice:" + secret + "@h:90\r92?sasl=plain"},
		{"SpaceAndQuote", "kafka://alice:" + secret + " \"x@h:9092"},
		{"NonASCIIAndHash", "kafka://alice:" + secret + "é#x@h:9092"},
		{"BadEscape", "kafka://alice:" + secret + "%zz@h:9092?sasl=plain"},
		{"MisspelledSecretParameter", "kafka://h:9092?sasl=plain&sasl_user=a&sasl_pasword=" + secret},
		{"MisspelledSecretAndBadValue", "kafka://h:9092?acks=some&sasl_passwd=" + secret},
		{"PasswordWithoutMechanism", "kafka://alice:" + secret + "@h:9092"},
		{"PasswordInBadQuery", "kafka://h:9092?sasl_password=" + secret + "%"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := kafka.ParseURL(tc.url)
			if err == nil {
				// Parsed: the password must have reached the SASL
				// mechanism, not a host or a parameter.
				if o.SASL == nil {
					t.Fatalf("parsed without error and without SASL: brokers %q", o.Brokers)
				}
				for _, b := range o.Brokers {
					if strings.Contains(b, secret) {
						t.Fatalf("the password ended up in broker address %q", b)
					}
				}
				return
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "S3CRET") {
				t.Errorf("the error contains the password: %v", err)
			}
			if !errors.Is(err, pubsub.ErrInvalid) {
				t.Errorf("%v, want ErrInvalid", err)
			}
		})
	}
}

// TestParseURLTakesAnUnescapedQuestionMarkAsPartOfThePassword pins how the
// user info is split off: the last "@" ends it even after a "?", unless a
// parameter (a "=" or "&") stands between.
func TestParseURLTakesAnUnescapedQuestionMarkAsPartOfThePassword(t *testing.T) {
	cases := []struct{ url, brokers, user string }{
		{"kafka://alice:pw?x@h:9092?sasl=plain", "h:9092", "alice"},
		{"kafka://h:9092?sasl=plain&sasl_user=bob@example.com", "h:9092", "bob@example.com"},
		{"kafka://alice:p@ss@h1:1,h2:2?sasl=scram-sha-256", "h1:1,h2:2", "alice"},
	}
	for _, tc := range cases {
		o, err := kafka.ParseURL(tc.url)
		if err != nil {
			t.Errorf("%s: %v", tc.url, err)
			continue
		}
		if got := strings.Join(o.Brokers, ","); got != tc.brokers {
			t.Errorf("%s: brokers %q, want %q", tc.url, got, tc.brokers)
		}
		if o.SASL == nil {
			t.Errorf("%s: no SASL mechanism", tc.url)
		}
	}
}

// FuzzParseURLNeverPrintsThePassword: for any password and URL shape, no
// ParseURL error contains the password (raw or percent-decoded).
func FuzzParseURLNeverPrintsThePassword(f *testing.F) {
	shapes := []string{
		"kafka://alice:%s@h:9092",
		"kafka://alice:%s@h:9092?sasl=plain",
		"kafka://h:9092?sasl=plain&sasl_user=a&sasl_password=%s",
		"kafka://h:9092?sasl=plain&sasl_user=a&sasl_pasword=%s",
		"kafka://alice:%s@h1:1,h2:port?sasl=scram-sha-512",
	}
	for i, s := range []string{"SECRET?x", "SECRET#x", "SECRET/x", "SECRET\r", "SEC RET\"", "sécret#", "p@ss", "a:b", "%zz1", "x=y&z"} {
		f.Add(uint8(i), s)
	}
	f.Fuzz(func(t *testing.T, shape uint8, password string) {
		if len(password) < 6 {
			return // short ones occur in the URL's fixed text by chance
		}
		u := strings.Replace(shapes[int(shape)%len(shapes)], "%s", password, 1)
		rest := strings.Replace(shapes[int(shape)%len(shapes)], "%s", "", 1)
		if strings.Contains(rest, password) {
			return
		}
		_, err := kafka.ParseURL(u)
		if err == nil {
			return
		}
		msg := err.Error()
		if strings.Contains(msg, password) {
			t.Fatalf("error contains the password %q: %v", password, err)
		}
		if dec, derr := url.PathUnescape(password); derr == nil && len(dec) >= 6 && !strings.Contains(rest, dec) && strings.Contains(msg, dec) {
			t.Fatalf("error contains the decoded password %q: %v", dec, err)
		}
	})
}
