package kafka_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/kafka"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// TestPublishOfABatchIsOneProduceRequest: one Publish call of many
// messages over several partitions reaches the (single) broker as one
// produce request, not one for the first record and more for the rest
// (producing record by record without a linger sent 2.45 requests per
// call). franz-go drains the batch's partitions one after the other, so its
// sender can occasionally cut a request between two of them (seen only
// under the race detector: up to 12 in 100 calls); the bound allows that
// and nothing more.
func TestPublishOfABatchIsOneProduceRequest(t *testing.T) {
	admin := openClient(t, "")
	topic := newTopic(t, admin, uniqueName(t, "onereq"))
	counter := &cuttingProxy{} // no cuts armed: it only counts
	b, err := kafka.Dial(context.Background(), kafka.Options{Brokers: strings.Split(integration.Kafka(t), ","), Dialer: counter.dial})
	if err != nil {
		t.Fatal(err)
	}
	c := pubsub.NewClient(b)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	publish := func() {
		t.Helper()
		msgs := make([]*pubsub.Message, 100)
		for i := range msgs {
			msgs[i] = &pubsub.Message{Key: "k" + strconv.Itoa(i), Payload: []byte("x")}
		}
		if err := c.Publish(ctx, topic, msgs...); err != nil {
			t.Fatal(err)
		}
	}
	publish() // the producer learns the topic's partitions
	const calls = 100
	before := counter.produces.Load()
	for i := 0; i < calls; i++ {
		publish()
	}
	if got := counter.produces.Load() - before; got < calls || got > calls*5/4 {
		t.Errorf("%d Publish calls of 100 messages sent %d produce requests, want %d (at most %d)", calls, got, calls, calls*5/4)
	}
}
