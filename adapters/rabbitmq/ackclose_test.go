package rabbitmq_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// Acks given before a clean Close must not come back: per round, 100
// deliveries are received, acked in a random order and the subscription
// closed at once; any of them delivered again later (in a later round or
// the final drain) counts as redelivered. Messages carry 16 keys, so that
// with partitions=N they are spread over every partition queue.
func TestAcksBeforeACleanCloseAreNeverRedelivered(t *testing.T) {
	url := integration.AMQP(t)
	const rounds, perRound = 50, 100
	for _, cfg := range []string{
		"queue_type=quorum", "queue_type=classic",
		"queue_type=quorum&partitions=4", "queue_type=classic&partitions=4", "queue_type=classic&partitions=1",
	} {
		t.Run(cfg, func(t *testing.T) {
			qt := cfg
			c := openClient(t, withParams(url, cfg))
			topic := topicName(t)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			acked := map[string]bool{}
			redelivered := 0
			for r := 0; r < rounds; r++ {
				sub, err := c.Subscribe(ctx, topic, pubsub.Group("g"), pubsub.Prefetch(2*perRound))
				if err != nil {
					t.Fatal(err)
				}
				msgs := make([]*pubsub.Message, perRound)
				for i := range msgs {
					msgs[i] = &pubsub.Message{ID: fmt.Sprintf("r%d-%d", r, i), Key: fmt.Sprintf("k%d", i%16), Payload: []byte("x")}
				}
				if err := c.Publish(ctx, topic, msgs...); err != nil {
					t.Fatal(err)
				}
				var ds []*pubsub.Delivery
				for len(ds) < perRound {
					d, err := sub.Receive(ctx)
					if err != nil {
						t.Fatalf("round %d: receive: %v", r, err)
					}
					if acked[d.Message.ID] {
						redelivered++
						t.Errorf("round %d: %s was acked before a clean Close and came back (attempt %d)", r, d.Message.ID, d.Message.Attempt)
						_ = d.Ack()
						continue
					}
					ds = append(ds, d)
				}
				rand.Shuffle(len(ds), func(i, j int) { ds[i], ds[j] = ds[j], ds[i] })
				for _, d := range ds {
					if err := d.Ack(); err != nil {
						t.Fatal(err)
					}
					acked[d.Message.ID] = true
				}
				if err := sub.Close(); err != nil {
					t.Fatalf("round %d: close: %v", r, err)
				}
			}
			// Drain: a marker published now comes after anything requeued.
			sub, err := c.Subscribe(ctx, topic, pubsub.Group("g"))
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			if err := c.Publish(ctx, topic, &pubsub.Message{ID: "marker", Payload: []byte("m")}); err != nil {
				t.Fatal(err)
			}
			for {
				d, err := sub.Receive(ctx)
				if err != nil {
					t.Fatal(err)
				}
				_ = d.Ack()
				if d.Message.ID == "marker" {
					break
				}
				redelivered++
				t.Errorf("drain: %s was acked before a clean Close and came back", d.Message.ID)
			}
			t.Logf("%s: %d rounds of %d acked out of order then closed: %d redelivered", qt, rounds, perRound, redelivered)
		})
	}
}
