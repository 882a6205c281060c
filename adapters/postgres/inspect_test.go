package postgres_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestInspectorReportsLagPerGroup(t *testing.T) {
	url := integration.Postgres(t)
	pubsubtest.RunInspect(t, pubsubtest.InspectOptions{
		Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
			return pubsub.Open(ctx, url)
		},
		// The topic's one group holds the messages it has not acked.
		TopicMessages: func(n, m int) int64 { return int64(n - m) },
	})
}

// Deliveries a member holds count in the lag and as in flight; the
// backlog of a topic without a group is reported as group "".
func TestInspectorCountsHeldDeliveriesAndTheBacklog(t *testing.T) {
	c := open(t, integration.Postgres(t))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := "held-" + strings.ReplaceAll(pubsub.NewID(), "-", "")[20:]
	t.Cleanup(func() { _ = c.DeleteTopic(context.Background(), topic) })
	for i := 0; i < 6; i++ {
		if err := c.Publish(ctx, topic, &pubsub.Message{Payload: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	gs, err := c.Groups(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != 1 || gs[0].Group != "" || gs[0].Lag != 6 || gs[0].InFlight != 0 {
		t.Fatalf("before any group: %+v, want the backlog (group \"\") with lag 6, none in flight", gs)
	}
	sub, err := c.Subscribe(ctx, topic, pubsub.Group("g"), pubsub.Prefetch(2))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	d, err := sub.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gs, err = c.Groups(ctx, topic, "g")
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != 1 || gs[0].Lag != 6 || gs[0].InFlight < 1 {
		t.Fatalf("with one delivery held: %+v, want group g with lag 6 and at least 1 in flight", gs)
	}
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
}
