package nsq_test

import (
	"context"
	"testing"

	_ "github.com/omnibusmq/omnibus/adapters/nsq"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestConformance(t *testing.T) {
	url := brokerEnv(t, envURL)[0]
	pubsubtest.Run(t, pubsubtest.Harness{
		Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
			return pubsub.Open(ctx, url)
		},
		NewTopic: func(_ context.Context, _ *testing.T, base string) string { return topicName(base) },
	})
}
