package postgres_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/postgres"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// Open on a server that accepts the connection and never answers gives up
// after connect_timeout, or DefaultConnectTimeout without one, even with a
// context that never ends. Both sslmode=disable (one attempt) and the
// default sslmode=prefer (TLS, then plain text to the same address: one
// budget for both) are bounded.
func TestOpenGivesUpOnSilentServer(t *testing.T) {
	addr := integration.SilentListener(t)
	for _, tc := range []struct {
		name     string
		query    string
		min, max time.Duration
	}{
		{"connect_timeout parameter", "?sslmode=disable&connect_timeout=1", time.Second, 5 * time.Second},
		{"connect_timeout with sslmode=prefer", "?connect_timeout=1", time.Second, 5 * time.Second},
		{"default timeout", "?sslmode=disable", postgres.DefaultConnectTimeout, postgres.DefaultConnectTimeout + 5*time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			done := make(chan error, 1)
			go func() {
				c, err := pubsub.Open(context.Background(), "postgres://u:s3cretPW@"+addr+"/db"+tc.query)
				if err == nil {
					_ = c.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				took := time.Since(start)
				if err == nil {
					t.Fatal("Open succeeded against a server that never answers")
				}
				if took < tc.min || took > tc.max {
					t.Errorf("Open gave up after %v, want between %v and %v: %v", took, tc.min, tc.max, err)
				}
				if s := err.Error(); strings.Contains(s, "s3cretPW") {
					t.Errorf("error shows the password: %v", err)
				}
				t.Logf("after %v: %v", took.Round(time.Millisecond), err)
			case <-time.After(tc.max + 10*time.Second):
				t.Fatalf("Open still waiting after %v", tc.max+10*time.Second)
			}
		})
	}
}
