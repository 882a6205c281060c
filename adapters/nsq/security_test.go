package nsq_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
)

// roundTrip publishes one message and receives it through a new group.
func roundTrip(t *testing.T, c *pubsub.Client) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topic := topicName("rt")
	s := subscribeGroup(t, c, topic, "g")
	m := &pubsub.Message{Key: "k", Payload: []byte("over the wire"), Metadata: map[string]string{"h": "v"}}
	if err := c.Publish(ctx, topic, m); err != nil {
		t.Fatalf("publish: %v", err)
	}
	d, err := s.Receive(ctx)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	_ = d.Ack()
	if d.Message.ID != m.ID || string(d.Message.Payload) != "over the wire" || d.Message.Metadata["h"] != "v" {
		t.Errorf("received %+v, want %s intact", d.Message, m.ID)
	}
}

func TestTLS(t *testing.T) {
	env := brokerEnv(t, envURL, envCA)
	base, ca := env[0], env[1]
	t.Run("VerifiedAgainstTheCARoundTrips", func(t *testing.T) {
		roundTrip(t, open(t, withParams(base, "tls", "true", "tls_ca", ca)))
	})
	t.Run("UnknownCAIsAPermanentError", func(t *testing.T) {
		_, err := pubsub.Open(context.Background(), withParams(base, "tls", "true"))
		if !errors.Is(err, pubsub.ErrPermanent) || !strings.Contains(err.Error(), "did not verify") {
			t.Errorf("Open with system roots: %v, want ErrPermanent saying the certificate did not verify", err)
		}
	})
	t.Run("WrongServerNameIsAPermanentError", func(t *testing.T) {
		_, err := pubsub.Open(context.Background(), withParams(base, "tls", "true", "tls_ca", ca, "tls_server_name", "nsq.example.org"))
		if !errors.Is(err, pubsub.ErrPermanent) {
			t.Errorf("Open with a wrong server name: %v, want ErrPermanent", err)
		}
	})
}

// ownNSQD starts an nsqd of its own (the binary of scripts/brokers up nsq),
// without TLS, with extra flags, and returns its nsq:// URL. With a secret
// it requires AUTH against an HTTP server that accepts only that secret.
func ownNSQD(t testing.TB, secret string, flags ...string) string {
	t.Helper()
	bin := brokerEnv(t, "OMNIBUS_NSQ_NSQD")[0]
	tcp, httpAddr := freeAddr(t), freeAddr(t)
	args := []string{"--tcp-address=" + tcp, "--http-address=" + httpAddr, "--broadcast-address=127.0.0.1",
		"--data-path=" + t.TempDir(), "--log-level=warn"}
	if secret != "" {
		auth := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Get("secret") != secret {
				http.Error(w, `{"message":"bad secret"}`, http.StatusForbidden)
				return
			}
			fmt.Fprint(w, `{"ttl":3600,"identity":"omnibus-test","authorizations":[{"topic":".*","channels":[".*"],"permissions":["subscribe","publish"]}]}`)
		}))
		t.Cleanup(auth.Close)
		args = append(args, "--auth-http-address="+strings.TrimPrefix(auth.URL, "http://"))
	}
	cmd := exec.Command(bin, append(args, flags...)...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(20 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get("http://" + httpAddr + "/ping")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("nsqd did not answer /ping on %s within 20s: %v", httpAddr, err)
		}
		time.Sleep(50 * time.Millisecond) // polling readiness, bounded by the deadline
	}
	return "nsq://" + tcp
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestAuthSecret(t *testing.T) {
	const secret = "s3cret-for-nsqd-auth"
	base := ownNSQD(t, secret)
	t.Run("AcceptedSecretRoundTrips", func(t *testing.T) {
		roundTrip(t, open(t, withParams(base, "auth_secret", secret)))
	})
	cases := []struct {
		name, secret, mention string
	}{
		{"RefusedSecretIsAPermanentError", "wrong-secret-value", "refused the auth secret"},
		{"MissingSecretIsAPermanentError", "", "requires AUTH"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			url := base
			if tc.secret != "" {
				url = withParams(base, "auth_secret", tc.secret)
			}
			_, err := pubsub.Open(context.Background(), url)
			if !errors.Is(err, pubsub.ErrPermanent) || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("Open: %v, want ErrPermanent mentioning %q", err, tc.mention)
			}
			if tc.secret != "" && strings.Contains(err.Error(), tc.secret) {
				t.Errorf("error contains the secret: %v", err)
			}
		})
	}
}

// An nsqd without TLS answers IDENTIFY with tls_v1=false, and go-nsq would
// carry on in plain text: tls=true must refuse that.
func TestTLSRequestedButNotOfferedIsRefused(t *testing.T) {
	base := ownNSQD(t, "")
	_, err := pubsub.Open(context.Background(), withParams(base, "tls", "true"))
	if !errors.Is(err, pubsub.ErrPermanent) || !strings.Contains(err.Error(), "does not offer TLS") {
		t.Errorf("Open with tls=true against nsqd without TLS: %v, want ErrPermanent saying nsqd does not offer TLS", err)
	}
}
