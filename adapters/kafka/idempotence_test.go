package kafka_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/omnibusmq/omnibus/adapters/kafka"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// cuttingProxy dials the real broker and, while cuts remain, lets a
// produce request through to the broker but cuts the connection as soon
// as the broker's answer arrives, before the client reads it: the record
// is in the log and the client cannot know.
type cuttingProxy struct {
	left     atomic.Int32 // cuts still to make
	done     atomic.Int32 // cuts made
	produces atomic.Int64 // produce requests written
}

func (p *cuttingProxy) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &cuttingConn{Conn: c, p: p}, nil
}

type cuttingConn struct {
	net.Conn
	p *cuttingProxy

	mu        sync.Mutex
	remaining int  // bytes of the request being written
	produced  bool // a produce request was written while a cut was armed
}

// Write forwards a request; it reads each request's size and API key from
// its first bytes (franz-go writes a request in one call).
func (c *cuttingConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if c.remaining == 0 && len(b) >= 6 {
		size := int(binary.BigEndian.Uint32(b))
		key := int16(binary.BigEndian.Uint16(b[4:]))
		c.remaining = 4 + size
		if key == 0 { // Produce
			c.p.produces.Add(1)
			if !c.produced && c.p.left.Add(-1) >= 0 {
				c.produced = true
			}
		}
	}
	c.remaining = max(c.remaining-len(b), 0)
	c.mu.Unlock()
	return c.Conn.Write(b)
}

// Read cuts the connection when the answer to an armed produce arrives.
func (c *cuttingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	cut := c.produced && n > 0
	c.mu.Unlock()
	if cut {
		c.p.done.Add(1)
		_ = c.Conn.Close()
		return 0, io.ErrUnexpectedEOF
	}
	return n, err
}

// TestPublishRetriedAfterALostAnswerWritesEachRecordOnce: the connection is
// cut after the broker appended a produce request and before the client
// read the answer, several times; every Publish still returns nil, and the
// topic holds each record exactly once (idempotent producing).
func TestPublishRetriedAfterALostAnswerWritesEachRecordOnce(t *testing.T) {
	admin := openClient(t, "")
	topic := newTopic(t, admin, uniqueName(t, "idem"))
	proxy := &cuttingProxy{}
	const cuts, calls, per = 3, 30, 10
	proxy.left.Store(cuts)
	b, err := kafka.Dial(context.Background(), kafka.Options{Brokers: strings.Split(integration.Kafka(t), ","), Dialer: proxy.dial, WriteTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c := pubsub.NewClient(b)
	defer c.Close()
	var ids []string
	for i := 0; i < calls; i++ {
		msgs := make([]*pubsub.Message, per)
		for j := range msgs {
			msgs[j] = &pubsub.Message{Key: "k" + strconv.Itoa(j), Payload: []byte(strconv.Itoa(i*per + j))}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err := c.Publish(ctx, topic, msgs...)
		cancel()
		if err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		for _, m := range msgs {
			ids = append(ids, m.ID)
		}
	}
	if got := proxy.done.Load(); got != cuts {
		t.Fatalf("the proxy cut %d answers, want %d: the test proved nothing", got, cuts)
	}
	got := readAll(t, integration.Kafka(t), topic)
	if len(got) != len(ids) {
		t.Errorf("the topic holds %d records, want %d", len(got), len(ids))
	}
	count := map[string]int{}
	for _, id := range got {
		count[id]++
	}
	for _, id := range ids {
		if count[id] != 1 {
			t.Errorf("record %s is in the log %d times, want exactly once", id, count[id])
		}
	}
}

// readAll reads every record of topic with a raw franz-go consumer and
// returns their omnibus-id headers.
func readAll(t *testing.T, brokers, topic string) []string {
	t.Helper()
	var ids []string
	for _, r := range rawRecords(t, brokers, topic) {
		ids = append(ids, headerID(r))
	}
	return ids
}

func headerID(r *kgo.Record) string {
	for _, h := range r.Headers {
		if h.Key == kafka.HeaderID {
			return string(h.Value)
		}
	}
	return ""
}

// rawRecords reads every record of topic with a raw franz-go consumer.
func rawRecords(t *testing.T, brokers, topic string) []*kgo.Record {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ends, err := rawAdmin(t, brokers).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	total := int64(0)
	at := map[int32]kgo.Offset{}
	ends.Each(func(o kadm.ListedOffset) {
		total += o.Offset
		at[o.Partition] = kgo.NewOffset().AtStart()
	})
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: at}))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	for int64(len(recs)) < total {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("read %d of %d records: %v", len(recs), total, err)
		}
		fs.EachError(func(_ string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				t.Logf("raw fetch of partition %d: %v", p, err)
			}
		})
		recs = append(recs, fs.Records()...)
	}
	return recs
}
