package kafka_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/omnibusmq/omnibus/adapters/kafka"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// These tests run against the security listeners of the broker that
// `scripts/brokers up kafka` starts: SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256,
// SCRAM-SHA-512; integration.KafkaSASL) and SSL with a required client
// certificate (integration.KafkaTLS).

var saslMechanisms = []string{"plain", "scram-sha-256", "scram-sha-512"}

// logSink collects everything a slog.Logger writes, for asserting that no
// secret is logged.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func debugLogger() (*slog.Logger, *logSink) {
	sink := &logSink{}
	return slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug})), sink
}

// openLogged opens rawURL the way pubsub.Open does, with every log line of
// the adapter and of the client going to l.
func openLogged(ctx context.Context, rawURL string, l *slog.Logger) (*pubsub.Client, error) {
	o, err := kafka.ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	o.Logger = l
	b, err := kafka.Dial(ctx, o)
	if err != nil {
		return nil, err
	}
	return pubsub.NewClient(b, pubsub.WithLogger(l)), nil
}

// saslURL is a kafka:// URL for mech with the credentials in the query
// (form "params") or in the user info (form "userinfo").
func saslURL(brokers, mech, form, user, password string) string {
	if form == "userinfo" {
		return fmt.Sprintf("kafka://%s@%s?sasl=%s", url.UserPassword(user, password).String(), brokers, mech)
	}
	return fmt.Sprintf("kafka://%s?sasl=%s&sasl_user=%s&sasl_password=%s", brokers, mech, url.QueryEscape(user), url.QueryEscape(password))
}

// roundTrip creates a topic through c, publishes n keyed messages and
// receives every one of them through a group subscription (consumer-group
// protocol, commits) and a group-less one (direct partition readers), so
// that every kind of connection the adapter opens goes through the secured
// listener.
func roundTrip(t *testing.T, c *pubsub.Client) {
	t.Helper()
	topic := newTopic(t, c, uniqueName(t, "sec"))
	ctx, cancel := wait()
	defer cancel()
	grouped := subscribe(t, c, topic, uniqueName(t, "g"))
	direct, err := c.Subscribe(ctx, topic, pubsub.FromOldest())
	if err != nil {
		t.Fatalf("group-less subscribe to %s: %v", topic, err)
	}
	t.Cleanup(func() { _ = direct.Close() })
	const n = 20
	var msgs []*pubsub.Message
	for i := 0; i < n; i++ {
		msgs = append(msgs, &pubsub.Message{Key: "k" + strconv.Itoa(i%5), Payload: []byte(strconv.Itoa(i))})
	}
	if err := c.Publish(ctx, topic, msgs...); err != nil {
		t.Fatalf("publish: %v", err)
	}
	for _, s := range []*pubsub.Subscription{grouped, direct} {
		seen := map[int]bool{}
		for len(seen) < n {
			d := receive(t, s)
			seen[seqOf(t, d)] = true
			if err := d.Ack(); err != nil {
				t.Fatalf("ack: %v", err)
			}
		}
	}
	if err := grouped.Close(); err != nil {
		t.Fatalf("close group subscription (final commit): %v", err)
	}
}

func TestSASLRoundTrip(t *testing.T) {
	brokers, user, password := integration.KafkaSASL(t)
	for _, mech := range saslMechanisms {
		for _, form := range []string{"params", "userinfo"} {
			t.Run(mech+"/"+form, func(t *testing.T) {
				ctx, cancel := wait()
				defer cancel()
				l, logs := debugLogger()
				c, err := openLogged(ctx, saslURL(brokers, mech, form, user, password), l)
				if err != nil {
					t.Fatalf("open with sasl=%s and the right credentials: %v", mech, err)
				}
				roundTrip(t, c)
				if err := c.Close(); err != nil {
					t.Fatalf("close: %v", err)
				}
				if strings.Contains(logs.String(), password) {
					t.Errorf("the password appears in the logs:\n%s", logs)
				}
			})
		}
	}
}

// TestSASLRoundTripFromOptions builds the mechanism with SASLMechanism and
// Options instead of a URL.
func TestSASLRoundTripFromOptions(t *testing.T) {
	brokers, user, password := integration.KafkaSASL(t)
	for _, mech := range saslMechanisms {
		t.Run(mech, func(t *testing.T) {
			ctx, cancel := wait()
			defer cancel()
			m, err := kafka.SASLMechanism(mech, user, password)
			if err != nil {
				t.Fatal(err)
			}
			b, err := kafka.Dial(ctx, kafka.Options{Brokers: strings.Split(brokers, ","), SASL: m})
			if err != nil {
				t.Fatalf("Dial with sasl=%s: %v", mech, err)
			}
			c := pubsub.NewClient(b)
			t.Cleanup(func() { _ = c.Close() })
			roundTrip(t, c)
		})
	}
}

// TestSASLWrongPassword: the broker refuses the credentials at Open (the
// adapter's first metadata request authenticates). The error names the
// mechanism and the listener, is ErrPermanent (retrying cannot help), and
// neither it nor any log line contains the password given or the real one.
func TestSASLWrongPassword(t *testing.T) {
	brokers, user, password := integration.KafkaSASL(t)
	for _, mech := range saslMechanisms {
		for _, form := range []string{"params", "userinfo"} {
			t.Run(mech+"/"+form, func(t *testing.T) {
				wrong := fmt.Sprintf("Wrong-Pa55word-%d", time.Now().UnixNano())
				rawURL := saslURL(brokers, mech, form, user, wrong)
				ctx, cancel := wait()
				defer cancel()
				l, logs := debugLogger()
				start := time.Now()
				c, err := openLogged(ctx, rawURL, l)
				if err == nil {
					// Open may legitimately succeed lazily; the first
					// Publish must then fail.
					t.Cleanup(func() { _ = c.Close() })
					err = c.Publish(ctx, uniqueName(t, "never"), &pubsub.Message{Payload: []byte("x")})
					if err == nil {
						t.Fatalf("sasl=%s with a wrong password: Open and Publish both succeeded", mech)
					}
				}
				t.Logf("sasl=%s, wrong password: failed after %v: %v", mech, time.Since(start).Round(time.Millisecond), err)
				checkAuthError(t, err, mech, brokers, wrong, password)
				for _, secret := range []string{wrong, password} {
					if strings.Contains(logs.String(), secret) {
						t.Errorf("a password appears in the logs:\n%s", logs)
					}
				}

				// The same through pubsub.Open, whose errors quote the URL.
				_, err = pubsub.Open(ctx, rawURL)
				if err == nil {
					t.Fatalf("pubsub.Open with sasl=%s and a wrong password succeeded", mech)
				}
				checkAuthError(t, err, mech, brokers, wrong, password)
			})
		}
	}
}

func checkAuthError(t *testing.T, err error, mech, brokers string, secrets ...string) {
	t.Helper()
	msg := err.Error()
	for _, s := range secrets {
		if strings.Contains(msg, s) {
			t.Errorf("the error contains a password: %v", err)
		}
	}
	if !strings.Contains(msg, "sasl="+mech) {
		t.Errorf("the error does not name the mechanism (want %q in it): %v", "sasl="+mech, err)
	}
	if !strings.Contains(msg, brokers) {
		t.Errorf("the error does not name the listener %s: %v", brokers, err)
	}
	if !errors.Is(err, kerr.SaslAuthenticationFailed) {
		t.Errorf("the error is not Kafka's SASL_AUTHENTICATION_FAILED: %v", err)
	}
	if !errors.Is(err, pubsub.ErrPermanent) {
		t.Errorf("a refused login is not ErrPermanent: %v", err)
	}
}

// TestSASLUnknownUser: a user the broker does not know is refused like a
// wrong password.
func TestSASLUnknownUser(t *testing.T) {
	brokers, _, password := integration.KafkaSASL(t)
	for _, mech := range saslMechanisms {
		t.Run(mech, func(t *testing.T) {
			ctx, cancel := wait()
			defer cancel()
			_, err := pubsub.Open(ctx, saslURL(brokers, mech, "params", "nobody-"+strconv.Itoa(int(topicSeq.Add(1))), password))
			if err == nil {
				t.Fatalf("sasl=%s as an unknown user: Open succeeded", mech)
			}
			checkAuthError(t, err, mech, brokers, password)
		})
	}
}

func tlsURL(brokers string, params ...string) string {
	return "kafka://" + brokers + "?" + strings.Join(params, "&")
}

// TestTLSRoundTrip: the SSL listener with the CA and the client certificate
// (the listener requires one), from URL parameters.
func TestTLSRoundTrip(t *testing.T) {
	brokers, ca, cert, key := integration.KafkaTLS(t)
	ctx, cancel := wait()
	defer cancel()
	c, err := pubsub.Open(ctx, tlsURL(brokers, "tls_ca="+url.QueryEscape(ca), "tls_cert="+url.QueryEscape(cert), "tls_key="+url.QueryEscape(key)))
	if err != nil {
		t.Fatalf("open over TLS with CA and client certificate: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	roundTrip(t, c)
}

// TestTLSRefused: what the SSL listener refuses fails Open with an error
// that says TLS was in use.
func TestTLSRefused(t *testing.T) {
	brokers, ca, cert, key := integration.KafkaTLS(t)
	for _, tc := range []struct {
		name      string
		params    []string
		permanent bool   // the client itself rejected the server certificate
		hint      string // what the error must point at
	}{
		// The listener has ssl.client.auth=required.
		{"NoClientCertificate", []string{"tls_ca=" + url.QueryEscape(ca)}, false, "client certificate"},
		// The system pool does not know the throwaway CA.
		{"UnknownCA", []string{"tls_cert=" + url.QueryEscape(cert), "tls_key=" + url.QueryEscape(key)}, true, "tls_ca"},
		// The certificate is for 127.0.0.1 and localhost only.
		{"WrongServerName", []string{"tls_ca=" + url.QueryEscape(ca), "tls_cert=" + url.QueryEscape(cert), "tls_key=" + url.QueryEscape(key), "tls_server_name=not-the-broker.example"}, true, "tls_server_name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := wait()
			defer cancel()
			c, err := pubsub.Open(ctx, tlsURL(brokers, append(tc.params, "dial_timeout=5s")...))
			if err == nil {
				_ = c.Close()
				t.Fatal("Open succeeded")
			}
			t.Logf("error: %v", err)
			if !strings.Contains(err.Error(), "tls") || !strings.Contains(err.Error(), brokers) {
				t.Errorf("the error does not say TLS to %s was in use: %v", brokers, err)
			}
			if !strings.Contains(err.Error(), tc.hint) {
				t.Errorf("the error does not point at %s: %v", tc.hint, err)
			}
			if tc.permanent && !errors.Is(err, pubsub.ErrPermanent) {
				t.Errorf("a server certificate that does not verify is not ErrPermanent: %v", err)
			}
		})
	}
}
