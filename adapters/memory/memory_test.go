package memory_test

import (
	"context"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"

	_ "github.com/omnibusmq/omnibus/adapters/memory"
)

func TestConformance(t *testing.T) {
	pubsubtest.Run(t, pubsubtest.Harness{
		Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
			return pubsub.Open(ctx, "mem://conformance")
		},
	})
}
