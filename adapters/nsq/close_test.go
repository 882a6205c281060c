package nsq_test

import (
	"context"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// Closing a subscription on the URL's nsqd (no lookupd) returns once nsqd
// acknowledged the close, not after connect_timeout.
func TestSubscriptionCloseWithoutLookupdIsPrompt(t *testing.T) {
	c := open(t, withoutLookupd(t, integration.NSQ(t))+"&connect_timeout=5s")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, held := range []int{0, 2} {
		topic := topicName(t.Name())
		sub, err := c.Subscribe(ctx, topic, pubsub.Group("g"), pubsub.Prefetch(4))
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < held; i++ {
			if err := c.Publish(ctx, topic, &pubsub.Message{Payload: []byte("x")}); err != nil {
				t.Fatal(err)
			}
			if _, err := sub.Receive(ctx); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		if err := sub.Close(); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("with %d deliveries held, Close took %v (connect_timeout is 5s): it waited for the timeout", held, took)
		}
	}
}
