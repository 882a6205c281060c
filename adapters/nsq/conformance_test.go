package nsq_test

import (
	"context"
	"testing"

	_ "github.com/omnibusmq/omnibus/adapters/nsq"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestConformance(t *testing.T) {
	withLookupd := brokerEnv(t, envURL)[0]
	for _, tc := range []struct{ name, url string }{
		{"ThroughLookupd", withLookupd},
		{"DirectToNSQD", withoutLookupd(t, withLookupd)}, // the adapter's own reconnecting connection
	} {
		t.Run(tc.name, func(t *testing.T) {
			pubsubtest.Run(t, pubsubtest.Harness{
				Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
					return pubsub.Open(ctx, tc.url)
				},
				NewTopic: func(_ context.Context, _ *testing.T, base string) string { return topicName(base) },
			})
		})
	}
}
