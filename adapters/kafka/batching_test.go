package kafka_test

import (
	"context"
	"encoding/binary"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/kafka"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// produceCounter counts the produce requests its connections write.
type produceCounter struct{ n atomic.Int64 }

func (p *produceCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, p: p}, nil
}

type countingConn struct {
	net.Conn
	p *produceCounter

	mu        sync.Mutex
	remaining int // bytes of the request being written
}

// Write reads each request's size and API key from its first bytes
// (franz-go writes a request in one call).
func (c *countingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if c.remaining == 0 && len(b) >= 6 {
		c.remaining = 4 + int(binary.BigEndian.Uint32(b))
		if binary.BigEndian.Uint16(b[4:]) == 0 { // 0: Produce
			c.p.n.Add(1)
		}
	}
	c.remaining = max(c.remaining-len(b), 0)
	c.mu.Unlock()
	return c.Conn.Write(b)
}

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
	counter := &produceCounter{}
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
	before := counter.n.Load()
	for i := 0; i < calls; i++ {
		publish()
	}
	if got := counter.n.Load() - before; got < calls || got > calls*5/4 {
		t.Errorf("%d Publish calls of 100 messages sent %d produce requests, want %d (at most %d)", calls, got, calls, calls*5/4)
	}
}
