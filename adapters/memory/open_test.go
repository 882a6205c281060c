package memory_test

import (
	"context"
	"testing"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestOpenIsPubsubOpenForItsOwnSchemeOnly(t *testing.T) {
	pubsubtest.CheckOpenRefusesScheme(t, memory.Open, "kafka://localhost:9092", "kafka")
	ctx := context.Background()
	c, err := memory.Open(ctx, "mem://open-test")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Publish(ctx, "orders", &pubsub.Message{Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
}
