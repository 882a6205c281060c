package activemq_test

import (
	"context"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"

	_ "github.com/omnibusmq/omnibus/adapters/activemq"
)

// open returns a client on the test broker with extra URL parameters.
func open(t testing.TB, params string) *pubsub.Client {
	t.Helper()
	u := integration.ActiveMQ(t)
	if params != "" {
		u += "?" + params
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pubsub.Open(ctx, u)
	if err != nil {
		t.Fatalf("open %s: %v", pubsub.Redact(u), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestConformance(t *testing.T) {
	u := integration.ActiveMQ(t)
	pubsubtest.Run(t, pubsubtest.Harness{
		Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
			return pubsub.Open(ctx, u)
		},
	})
}
