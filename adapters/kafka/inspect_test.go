package kafka_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/kafka"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestInspectorReportsLagPerGroup(t *testing.T) {
	pubsubtest.RunInspect(t, pubsubtest.InspectOptions{
		Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
			return pubsub.Open(ctx, brokerURL(t, fmt.Sprintf("auto_create=true&partitions=%d", testPartitions)))
		},
		SubscribeOptions: []pubsub.SubscribeOption{pubsub.FromOldest()},
		// Kafka retains every record: acking moves the group, not the log.
		TopicMessages: func(n, _ int) int64 { return int64(n) },
	})
}

// Delivery.As gives each record's partition and offset: per partition the
// offsets of a fresh topic run 0, 1, 2, ... in delivery order.
func TestDeliveryAsGivesPartitionAndOffset(t *testing.T) {
	c := openClient(t, "")
	topic := newTopic(t, c, fmt.Sprintf("position-%d", time.Now().UnixNano()))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sub, err := c.Subscribe(ctx, topic, pubsub.Group("g"), pubsub.FromOldest())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	const n = 20
	for i := 0; i < n; i++ {
		if err := c.Publish(ctx, topic, &pubsub.Message{Key: fmt.Sprint("k", i%5), Payload: []byte{byte(i)}}); err != nil {
			t.Fatal(err)
		}
	}
	next := map[int32]int64{}
	for i := 0; i < n; i++ {
		d, err := sub.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var pos kafka.Position
		if !d.As(&pos) {
			t.Fatal("Delivery.As(*kafka.Position) = false")
		}
		if pos.Partition < 0 || pos.Partition >= testPartitions || pos.Offset != next[pos.Partition] {
			t.Errorf("delivery %d at partition %d offset %d, want offset %d", i, pos.Partition, pos.Offset, next[pos.Partition])
		}
		next[pos.Partition] = pos.Offset + 1
		var other int
		if d.As(&other) {
			t.Error("Delivery.As(*int) = true")
		}
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
	}
}

// The portable DeleteTopic (omnibus bench's cleanup) removes a Kafka topic.
func TestDeleteTopicThroughThePortableClient(t *testing.T) {
	c := openClient(t, "auto_create=true")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	topic := fmt.Sprintf("delete-%d", time.Now().UnixNano())
	if err := c.Publish(ctx, topic, &pubsub.Message{Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteTopic(ctx, topic, "g"); err != nil {
		t.Fatalf("DeleteTopic: %v", err)
	}
	ts, err := c.Topics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ti := range ts {
		if ti.Name == topic {
			t.Errorf("Topics still lists %s after DeleteTopic", topic)
		}
	}
}
