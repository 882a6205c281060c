package postgres_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestMain(m *testing.M) {
	pubsubtest.CrashMain()
	os.Exit(m.Run())
}

// Consumers SIGKILLed mid-stream and restarted in the same group lose
// nothing, and first effects keep per-key order (Postgres claims
// OrderingPerKey with key_ordering), alone and with two competing consumers.
func TestCrashKit(t *testing.T) {
	// A dead consumer's claims come back after visibility_timeout: short
	// here so that five kills take seconds, not minutes.
	base := withParams(t, integration.Postgres(t), "visibility_timeout", "2s")
	cases := []struct {
		name      string
		consumers int
	}{
		{"one-consumer", 1},
		{"two-competing-consumers", 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			topic := fmt.Sprintf("crash-%s-%d", tc.name, time.Now().UnixNano())
			rep := pubsubtest.RunCrash(t, pubsubtest.CrashOptions{
				URL:       base,
				Topic:     topic,
				Consumers: tc.consumers,
				Messages:  2000,
				Kills:     5,
			})
			t.Logf("%s: %s", tc.name, rep)
		})
	}
}
