package rabbitmq_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/rabbitmq"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

// These tests run against the TLS listener of the node that `scripts/brokers
// up rabbitmq` starts (integration.AMQPS): a certificate for 127.0.0.1 signed
// by a throwaway CA, client certificate verified when given, not required.

// tlsParams is the query that trusts ca and, when cert is not empty,
// presents that client certificate.
func tlsParams(ca, cert, key string) string {
	p := "tls_ca=" + url.QueryEscape(ca)
	if cert != "" {
		p += "&tls_cert=" + url.QueryEscape(cert) + "&tls_key=" + url.QueryEscape(key)
	}
	return p
}

// withPassword returns rawURL with its password replaced.
func withPassword(t *testing.T, rawURL, password string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), password)
	return u.String()
}

// writeSelfSignedCA writes a fresh self-signed CA certificate (PEM) that
// signed nothing the broker has, and returns its path.
func writeSelfSignedCA(t *testing.T) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "not the omnibus test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "wrong-ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// brokerConnection is what the broker reports about one client connection.
type brokerConnection struct {
	Name            string `json:"user_provided_name"` // filled from client_properties
	SSL             bool   `json:"ssl"`
	SSLProtocol     any    `json:"ssl_protocol"`
	PeerCertSubject any    `json:"peer_cert_subject"`
}

// brokerConnections lists, through $OMNIBUS_AMQP_CTL, the connections whose
// client-provided connection_name starts with prefix. It skips the check
// (not the test) when the wrapper is not available.
func brokerConnections(t *testing.T, prefix string) ([]brokerConnection, bool) {
	t.Helper()
	bin := os.Getenv(EnvCtl)
	if bin == "" {
		t.Logf("%s not set: the broker-side TLS check is left out", EnvCtl)
		return nil, false
	}
	out, err := exec.Command(bin, "list_connections", "client_properties", "ssl", "ssl_protocol", "peer_cert_subject",
		"--formatter", "json", "-q").Output()
	if err != nil {
		t.Fatalf("%s list_connections: %v", bin, err)
	}
	var rows []struct {
		ClientProperties [][]any `json:"client_properties"`
		brokerConnection
	}
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("list_connections output: %v\n%s", err, out)
	}
	var conns []brokerConnection
	for _, r := range rows {
		for _, p := range r.ClientProperties {
			if len(p) == 3 && p[0] == "connection_name" {
				if name, _ := p[2].(string); strings.HasPrefix(name, prefix) {
					r.brokerConnection.Name = name
					conns = append(conns, r.brokerConnection)
				}
			}
		}
	}
	return conns, true
}

// TestAMQPSPublishAndReceiveOverTheTLSListener: pubsub.Open of an amqps://
// URL with tls_ca (and once with a client certificate too) carries a message
// from Publish to a group subscription intact, and both connections of the
// client (publish and consume) are TLS connections on the broker's side,
// with the client certificate's subject when one was given.
func TestAMQPSPublishAndReceiveOverTheTLSListener(t *testing.T) {
	base, ca, cert, key := integration.AMQPS(t)
	for _, tc := range []struct {
		name     string
		params   string
		peerCert string // what the broker must report as the client certificate's subject ("" none)
	}{
		{"ServerVerifiedWithTLSCA", tlsParams(ca, "", ""), ""},
		{"WithClientCertificate", tlsParams(ca, cert, key), "omnibus-test-client"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			connName := fmt.Sprintf("omnibus-tls-%d", uniq.Add(1))
			c, err := pubsub.Open(ctx, withParams(base, tc.params+"&connection_name="+connName))
			if err != nil {
				t.Fatalf("open %s over TLS: %v", pubsub.Redact(base), err)
			}
			t.Cleanup(func() { _ = c.Close() })
			topic := topicName(t)
			s, err := c.Subscribe(ctx, topic, pubsub.Group("tls"))
			if err != nil {
				t.Fatalf("subscribe over TLS: %v", err)
			}
			defer s.Close()
			m := &pubsub.Message{Key: "k1", Payload: []byte("over tls"), Metadata: map[string]string{"h": "v"}}
			if err := c.Publish(ctx, topic, m); err != nil {
				t.Fatalf("publish over TLS: %v", err)
			}
			d, err := s.Receive(ctx)
			if err != nil {
				t.Fatalf("receive over TLS: %v", err)
			}
			if err := d.Ack(); err != nil {
				t.Fatalf("ack over TLS: %v", err)
			}
			if d.Message.ID != m.ID || d.Message.Key != "k1" || d.Message.Metadata["h"] != "v" || string(d.Message.Payload) != "over tls" {
				t.Fatalf("received %+v, want message %s intact", d.Message, m.ID)
			}

			conns, ok := brokerConnections(t, connName+"/")
			if !ok {
				return
			}
			roles := map[string]bool{}
			for _, bc := range conns {
				roles[strings.TrimPrefix(bc.Name, connName+"/")] = true
				subject := fmt.Sprint(bc.PeerCertSubject)
				t.Logf("broker sees %s: ssl=%v protocol=%v peer_cert_subject=%v", bc.Name, bc.SSL, bc.SSLProtocol, subject)
				if !bc.SSL {
					t.Errorf("the broker reports connection %s as not TLS", bc.Name)
				}
				if tc.peerCert != "" && !strings.Contains(subject, "CN="+tc.peerCert) {
					t.Errorf("connection %s: the broker saw client certificate %q, want CN=%s", bc.Name, subject, tc.peerCert)
				}
				if tc.peerCert == "" && strings.Contains(subject, "CN=") {
					t.Errorf("connection %s: the broker saw client certificate %q although none was configured", bc.Name, subject)
				}
			}
			if !roles["publish"] || !roles["consume"] {
				t.Errorf("the broker lists connections %v named %s/*, want publish and consume", roles, connName)
			}
		})
	}
}

// TestAMQPSWithAnUnknownCAFailsCertificateVerificationWithoutThePassword: a
// CA that did not sign the broker's certificate makes Open fail with a
// certificate verification error, with or without a client certificate;
// the password of the URL appears nowhere in the error.
func TestAMQPSWithAnUnknownCAFailsCertificateVerificationWithoutThePassword(t *testing.T) {
	base, _, cert, key := integration.AMQPS(t)
	wrongCA := writeSelfSignedCA(t)
	// The handshake fails before authentication, so the password need not
	// be the broker's; a unique one can be searched for in the error.
	secret := fmt.Sprintf("Secret-Pa55-%d", time.Now().UnixNano())
	rawBase := withPassword(t, base, secret)
	for _, tc := range []struct{ name, params string }{
		{"CAOnly", tlsParams(wrongCA, "", "")},
		{"WithClientCertificate", tlsParams(wrongCA, cert, key)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := pubsub.Open(ctx, withParams(rawBase, tc.params))
			if err == nil {
				_ = c.Close()
				t.Fatal("Open with a CA that did not sign the broker's certificate succeeded")
			}
			t.Logf("error: %v", err)
			var verr *tls.CertificateVerificationError
			if !errors.As(err, &verr) {
				t.Errorf("the error is not a certificate verification error (*tls.CertificateVerificationError): %v", err)
			}
			if !strings.Contains(err.Error(), "verify certificate") {
				t.Errorf("the error does not say the certificate did not verify: %v", err)
			}
			if !strings.Contains(err.Error(), "tls_ca") {
				t.Errorf("the error does not point at tls_ca: %v", err)
			}
			if !errors.Is(err, pubsub.ErrPermanent) {
				t.Errorf("a certificate that does not verify is not ErrPermanent (retrying cannot help): %v", err)
			}
			if errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Open ran into its deadline instead of failing the handshake: %v", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("the error contains the password: %v", err)
			}
		})
	}
}

// TestWrongPasswordIsPermanentAndNotInTheError: the broker refusing the
// login is ErrPermanent, over amqp:// and amqps://, and the error never
// carries the password.
func TestWrongPasswordIsPermanentAndNotInTheError(t *testing.T) {
	tlsBase, ca, _, _ := integration.AMQPS(t)
	secret := fmt.Sprintf("Wrong-Pa55-%d", time.Now().UnixNano())
	for _, tc := range []struct{ name, url string }{
		{"AMQP", withPassword(t, integration.AMQP(t), secret)},
		{"AMQPS", withParams(withPassword(t, tlsBase, secret), tlsParams(ca, "", ""))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := pubsub.Open(ctx, tc.url)
			if err == nil {
				_ = c.Close()
				t.Fatal("Open with a wrong password succeeded")
			}
			t.Logf("error: %v", err)
			if !errors.Is(err, pubsub.ErrPermanent) || !strings.Contains(err.Error(), "refused the credentials") {
				t.Errorf("want ErrPermanent saying the broker refused the credentials, got %v", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("the error contains the password: %v", err)
			}
		})
	}
}

// TestMismatchedProtocolAndPortFailsWithoutHanging: amqps:// to the plain
// AMQP port, and amqp:// to the TLS port, fail Open well before the
// context's deadline, with an error that is not the deadline and carries
// no password.
func TestMismatchedProtocolAndPortFailsWithoutHanging(t *testing.T) {
	tlsBase, ca, _, _ := integration.AMQPS(t)
	plainBase := integration.AMQP(t)
	secret := fmt.Sprintf("Secret-Pa55-%d", time.Now().UnixNano())
	toTLS := func(raw string) string {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		u.Scheme = rabbitmq.SchemeTLS
		return u.String()
	}
	toPlain := func(raw string) string {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		u.Scheme = rabbitmq.Scheme
		return u.String()
	}
	const deadline = 20 * time.Second
	for _, tc := range []struct{ name, url, hint string }{
		{"AMQPSToThePlainPort", withParams(withPassword(t, toTLS(plainBase), secret), tlsParams(ca, "", "")), "use amqp://"},
		{"AMQPToTheTLSPort", withPassword(t, toPlain(tlsBase), secret), "use amqps://"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), deadline)
			defer cancel()
			start := time.Now()
			c, err := pubsub.Open(ctx, tc.url)
			took := time.Since(start)
			if err == nil {
				_ = c.Close()
				t.Fatalf("Open of %s succeeded", pubsub.Redact(tc.url))
			}
			t.Logf("failed after %v: %v", took.Round(time.Millisecond), err)
			if errors.Is(err, context.DeadlineExceeded) || took >= deadline/2 {
				t.Errorf("Open hung for %v (deadline %v) instead of failing at once: %v", took, deadline, err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("the error contains the password: %v", err)
			}
			if !strings.Contains(err.Error(), tc.hint) || !errors.Is(err, pubsub.ErrPermanent) {
				t.Errorf("want an ErrPermanent that says %q, got %v", tc.hint, err)
			}
		})
	}
}

// TestConformanceOverAMQPS runs the portable conformance suite over the TLS
// listener (quorum queues; the plain listener runs both queue types).
func TestConformanceOverAMQPS(t *testing.T) {
	base, ca, _, _ := integration.AMQPS(t)
	u := withParams(base, tlsParams(ca, "", ""))
	pubsubtest.Run(t, pubsubtest.Harness{
		Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
			return pubsub.Open(ctx, u)
		},
		NewTopic: func(ctx context.Context, t *testing.T, base string) string {
			return base + "-tls"
		},
		Wait: 30 * time.Second,
	})
}
