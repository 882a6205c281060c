package faults_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// Groups (omnibus groups) on a broker that stops answering fails within
// the adapter's own bound instead of hanging: the proxy black-holes every
// byte after the client connected.
func TestGroupsGivesUpOnASilentBroker(t *testing.T) {
	cases := []struct {
		name   string
		url    func(t *testing.T) string
		params string
		bound  time.Duration // the documented bound, plus slack
	}{
		// Three missed heartbeats of 1s declare the connection dead.
		{"rabbitmq", func(t *testing.T) string { return integration.AMQP(t) }, "heartbeat=1s", 10 * time.Second},
		// Each query is bounded by 30s.
		{"postgres", func(t *testing.T) string { return integration.Postgres(t) }, "", 40 * time.Second},
		// The management connection is bounded by connection_timeout.
		{"activemq", func(t *testing.T) string { return integration.ActiveMQ(t) }, "connection_timeout=2s", 10 * time.Second},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			direct := tc.url(t)
			p, url := viaProxy(t, direct, tc.params)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			c, err := pubsub.Open(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			topic := "silent-" + strings.ReplaceAll(pubsub.NewID(), "-", "")[20:]
			defer func() { // throwaway topics do not pile up on a shared broker
				if dc, err := pubsub.Open(ctx, direct); err == nil {
					_ = dc.DeleteTopic(ctx, topic, "g")
					_ = dc.Close()
				}
			}()
			sub, err := c.Subscribe(ctx, topic, pubsub.Group("g"))
			if err != nil {
				t.Fatal(err)
			}
			sub.Close()
			if _, err := c.Groups(ctx, topic, "g"); err != nil {
				t.Fatalf("Groups before the fault: %v", err)
			}
			heal := p.BlackHole()
			defer heal()
			start := time.Now()
			_, err = c.Groups(ctx, topic, "g")
			took := time.Since(start)
			if err == nil || took > tc.bound || ctx.Err() != nil {
				t.Errorf("Groups on a silent broker: %v after %v; want an error within %v", err, took, tc.bound)
			}
			t.Logf("Groups on a silent broker failed after %v: %v", took.Round(time.Millisecond), err)
		})
	}
}
