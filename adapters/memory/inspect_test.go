package memory_test

import (
	"context"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestInspectorReportsLagPerGroup(t *testing.T) {
	pubsubtest.RunInspect(t, pubsubtest.InspectOptions{
		Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
			return pubsub.Open(ctx, "mem://inspect")
		},
		TopicMessages: func(n, m int) int64 { return int64(n - m) },
	})
}
