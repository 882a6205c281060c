package activemq_test

import (
	"context"
	"testing"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestInspectorReportsLagPerGroup(t *testing.T) {
	url := integration.ActiveMQ(t)
	pubsubtest.RunInspect(t, pubsubtest.InspectOptions{
		Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
			return pubsub.Open(ctx, url)
		},
		// The topic's one group queue holds what it has not acked.
		TopicMessages: func(n, m int) int64 { return int64(n - m) },
	})
}
