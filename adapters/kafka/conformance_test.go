package kafka_test

import (
	"context"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/kafka"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

// testPartitions is how many partitions every test topic has, so that group
// tests exercise assignment, per-partition order and per-partition commits.
const testPartitions = 4

// brokerURL returns the kafka:// URL of the real broker (see
// integration.Kafka: OMNIBUS_KAFKA_BROKERS, set by `scripts/brokers up kafka`).
func brokerURL(t testing.TB, params string) string {
	t.Helper()
	u := "kafka://" + integration.Kafka(t)
	if params != "" {
		u += "?" + params
	}
	return u
}

// openClient opens a client on the real broker and closes it after the test.
func openClient(t testing.TB, params string) *pubsub.Client {
	t.Helper()
	c, err := pubsub.Open(context.Background(), brokerURL(t, params))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func brokerOf(t testing.TB, c *pubsub.Client) *kafka.Broker {
	t.Helper()
	b, ok := c.Driver().(*kafka.Broker)
	if !ok {
		t.Fatalf("driver is %T, want *kafka.Broker", c.Driver())
	}
	return b
}

// newTopic creates a fresh topic with testPartitions partitions.
func newTopic(t testing.TB, admin *pubsub.Client, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := brokerOf(t, admin).CreateTopic(ctx, name, testPartitions, 1); err != nil {
		t.Fatalf("create topic %s: %v", name, err)
	}
	// Deleted afterwards, so that repeated runs against one broker do not
	// pile up thousands of partitions (which slows the broker down and
	// skews later benchmarks).
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := brokerOf(t, admin).DeleteTopic(ctx, name, nil); err != nil {
			t.Logf("delete topic %s: %v", name, err)
		}
	})
	return name
}

func TestConformance(t *testing.T) {
	admin := openClient(t, "")
	pubsubtest.Run(t, pubsubtest.Harness{
		Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
			return pubsub.Open(ctx, brokerURL(t, ""))
		},
		NewTopic: func(ctx context.Context, t *testing.T, base string) string {
			return newTopic(t, admin, base)
		},
		// A group joins after the suite publishes in some cases; on a log
		// the group must start at the oldest message to see them.
		SubscribeOptions: []pubsub.SubscribeOption{pubsub.FromOldest()},
	})
}
