package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/rabbitmq"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestInspectorReportsLagPerGroup(t *testing.T) {
	base := integration.AMQP(t)
	for _, qt := range []string{rabbitmq.QueueQuorum, rabbitmq.QueueClassic, "quorum&partitions=2"} {
		t.Run(qt, func(t *testing.T) {
			pubsubtest.RunInspect(t, pubsubtest.InspectOptions{
				Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
					return pubsub.Open(ctx, withParams(base, "queue_type="+qt))
				},
				TopicsUnsupported: true,
				// A quorum queue counts a closed member's unacked
				// deliveries as ready again a moment after the close.
				Settle: 10 * time.Second,
			})
		})
	}
}

func TestInspectorNeedsNamedGroupsAndExistingQueues(t *testing.T) {
	c := openClient(t, integration.AMQP(t))
	ctx := context.Background()
	topic := topicName(t)
	cases := []struct {
		name   string
		topic  string
		groups []string
		want   error
	}{
		{"no topic: AMQP cannot list exchanges", "", []string{"g"}, pubsub.ErrUnsupported},
		{"no group: AMQP cannot list queues", topic, nil, pubsub.ErrUnsupported},
		{"a group without a queue", topic, []string{"nobody"}, pubsub.ErrNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.Groups(ctx, tc.topic, tc.groups...); !errors.Is(err, tc.want) {
				t.Errorf("Groups(%q, %v) = %v, want an error wrapping %v", tc.topic, tc.groups, err, tc.want)
			}
		})
	}
}

// Without names, Groups reports the groups of the URL's groups=, whose
// queues hold what was published before any consumer started.
func TestInspectorReportsTheURLsGroups(t *testing.T) {
	c := openClient(t, withParams(integration.AMQP(t), "groups=a,b"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := topicName(t)
	defer c.DeleteTopic(context.Background(), topic, "a", "b") //nolint:errcheck // cleanup
	for i := 0; i < 3; i++ {
		if err := c.Publish(ctx, topic, &pubsub.Message{Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	gs, err := c.Groups(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != 2 || gs[0].Group != "a" || gs[1].Group != "b" || gs[0].Lag != 3 || gs[1].Lag != 3 {
		t.Errorf("Groups = %+v, want groups a and b with lag 3 each", gs)
	}
}

// A partitioned group (partitions=N) reports each partition queue's ready
// messages; they add up to the group's lag.
func TestInspectorReportsEachPartitionQueue(t *testing.T) {
	c := openClient(t, withParams(integration.AMQP(t), "partitions=3&groups=g"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := topicName(t)
	defer c.DeleteTopic(context.Background(), topic, "g") //nolint:errcheck // cleanup
	const n = 12
	for i := 0; i < n; i++ {
		if err := c.Publish(ctx, topic, &pubsub.Message{Key: fmt.Sprint("k", i), Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	gs, err := c.Groups(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != 1 || gs[0].Lag != n || len(gs[0].Partitions) != 3 {
		t.Fatalf("Groups = %+v, want group g with lag %d over 3 partitions", gs, n)
	}
	var sum int64
	for _, p := range gs[0].Partitions {
		sum += p.Lag
	}
	if sum != n {
		t.Errorf("partition lags add up to %d, want %d: %+v", sum, n, gs[0].Partitions)
	}
}
