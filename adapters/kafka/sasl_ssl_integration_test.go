package kafka_test

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// These tests run against the SASL_SSL listener of the broker that
// `scripts/brokers up kafka` starts (integration.KafkaSASLSSL): PLAIN,
// SCRAM-SHA-256 and SCRAM-SHA-512 over TLS with the certificate of the SSL
// listener, no client certificate.

// saslSSLURL is a kafka:// URL for mech with the credentials in the query,
// plus the TLS parameters given.
func saslSSLURL(brokers, mech, user, password string, tlsParams ...string) string {
	return strings.Join(append([]string{saslURL(brokers, mech, "params", user, password)}, tlsParams...), "&")
}

// TestSASLSSLRoundTripWithEachMechanism: with tls_ca and the credentials as
// URL parameters, every kind of connection the adapter opens (metadata and
// admin, producer, group coordinator, partition readers) authenticates with
// the mechanism over TLS: a plaintext or unauthenticated connection to this
// listener would fail. The password never reaches the logs.
func TestSASLSSLRoundTripWithEachMechanism(t *testing.T) {
	brokers, ca, user, password := integration.KafkaSASLSSL(t)
	for _, mech := range saslMechanisms {
		t.Run(mech, func(t *testing.T) {
			ctx, cancel := wait()
			defer cancel()
			l, logs := debugLogger()
			c, err := openLogged(ctx, saslSSLURL(brokers, mech, user, password, "tls_ca="+url.QueryEscape(ca)), l)
			if err != nil {
				t.Fatalf("open SASL_SSL with sasl=%s, tls_ca and the right credentials: %v", mech, err)
			}
			o := brokerOf(t, c).Options()
			if o.TLS == nil || o.SASL == nil || !strings.EqualFold(o.SASL.Name(), mech) {
				t.Fatalf("the URL set TLS=%v and SASL=%v, want TLS and sasl=%s", o.TLS != nil, o.SASL, mech)
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

// TestSASLSSLWrongPasswordIsRefusedNamingTheMechanism: over TLS the broker
// refuses a wrong password at Open; the error names the mechanism, TLS and
// the listener, is ErrPermanent, and neither it nor any log line contains
// the password given or the real one.
func TestSASLSSLWrongPasswordIsRefusedNamingTheMechanism(t *testing.T) {
	brokers, ca, user, password := integration.KafkaSASLSSL(t)
	for _, mech := range saslMechanisms {
		t.Run(mech, func(t *testing.T) {
			wrong := fmt.Sprintf("Wrong-Pa55word-%d", time.Now().UnixNano())
			rawURL := saslSSLURL(brokers, mech, user, wrong, "tls_ca="+url.QueryEscape(ca))
			ctx, cancel := wait()
			defer cancel()
			l, logs := debugLogger()
			c, err := openLogged(ctx, rawURL, l)
			if err == nil {
				// Open may legitimately succeed lazily; the first
				// Publish must then fail.
				t.Cleanup(func() { _ = c.Close() })
				err = c.Publish(ctx, uniqueName(t, "never"), &pubsub.Message{Payload: []byte("x")})
				if err == nil {
					t.Fatalf("sasl=%s over TLS with a wrong password: Open and Publish both succeeded", mech)
				}
			}
			t.Logf("error: %v", err)
			checkAuthError(t, err, mech, brokers, wrong, password)
			if !strings.Contains(err.Error(), "tls") {
				t.Errorf("the error does not say TLS was in use: %v", err)
			}
			for _, secret := range []string{wrong, password} {
				if strings.Contains(logs.String(), secret) {
					t.Errorf("a password appears in the logs:\n%s", logs)
				}
			}

			// The same through pubsub.Open, whose errors quote the URL.
			_, err = pubsub.Open(ctx, rawURL)
			if err == nil {
				t.Fatalf("pubsub.Open with sasl=%s over TLS and a wrong password succeeded", mech)
			}
			checkAuthError(t, err, mech, brokers, wrong, password)
		})
	}
}

// TestSASLSSLFailsBeforeAuthenticationWhenTLSDoesNot: with the right
// credentials, a server certificate the client does not trust is a
// permanent verification error pointing at tls_ca, and SASL without TLS to
// this listener fails (no hang); neither error contains the password.
func TestSASLSSLFailsBeforeAuthenticationWhenTLSDoesNot(t *testing.T) {
	brokers, _, user, password := integration.KafkaSASLSSL(t)
	for _, tc := range []struct {
		name      string
		params    []string
		permanent bool   // the client itself rejected the server certificate
		hint      string // what the error must point at ("" anything)
	}{
		// The system pool does not know the throwaway CA.
		{"ServerCertificateFromAnUnknownCA", []string{"tls=true"}, true, "tls_ca"},
		// A TLS listener does not speak Kafka in the clear.
		{"NoTLS", nil, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := wait()
			defer cancel()
			start := time.Now()
			c, err := pubsub.Open(ctx, saslSSLURL(brokers, "scram-sha-512", user, password, append(tc.params, "dial_timeout=5s")...))
			if err == nil {
				_ = c.Close()
				t.Fatal("Open succeeded")
			}
			t.Logf("failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
			if strings.Contains(err.Error(), password) {
				t.Errorf("the error contains the password: %v", err)
			}
			if !strings.Contains(err.Error(), "sasl=scram-sha-512") || !strings.Contains(err.Error(), brokers) {
				t.Errorf("the error does not name the mechanism and the listener %s: %v", brokers, err)
			}
			if tc.hint != "" && !strings.Contains(err.Error(), tc.hint) {
				t.Errorf("the error does not point at %s: %v", tc.hint, err)
			}
			if tc.permanent && !errors.Is(err, pubsub.ErrPermanent) {
				t.Errorf("a server certificate that does not verify is not ErrPermanent: %v", err)
			}
		})
	}
}
