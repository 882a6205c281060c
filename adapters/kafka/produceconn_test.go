package kafka

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// idleConns returns the pooled produce connections to addr.
func idleConns(b *Broker, addr string) []*produceConn {
	b.conns.mu.Lock()
	defer b.conns.mu.Unlock()
	return append([]*produceConn(nil), b.conns.idle[addr]...)
}

// endOffset reads partition 0's high watermark with a client of its own.
func endOffset(t *testing.T, addr, topic string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := kafkago.DialLeader(ctx, "tcp", addr, topic, 0)
	if err != nil {
		t.Fatalf("dial leader of %s: %v", topic, err)
	}
	defer c.Close()
	off, err := c.ReadLastOffset()
	if err != nil {
		t.Fatalf("last offset of %s: %v", topic, err)
	}
	return off
}

func TestProduceConnectionIsReusedAndABrokenOneIsReplacedWithoutLoss(t *testing.T) {
	addr := strings.Split(integration.Kafka(t), ",")[0]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := New(ctx, Options{Brokers: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	topic := fmt.Sprintf("produceconn-%d", time.Now().UnixNano())
	if err := b.CreateTopic(ctx, topic, 1, 1); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.DeleteTopic(context.Background(), topic) }()
	send := func(id string) {
		t.Helper()
		if err := b.SendBatch(ctx, topic, []*driver.Message{{ID: id, Payload: []byte(id)}}); err != nil {
			t.Fatalf("send %s: %v", id, err)
		}
	}

	send("m1")
	first := idleConns(b, addr)
	if len(first) != 1 {
		t.Fatalf("after one send, %d idle produce connections to %s, want 1", len(first), addr)
	}
	send("m2")
	if again := idleConns(b, addr); len(again) != 1 || again[0] != first[0] {
		t.Fatalf("second send did not reuse the idle connection: %v then %v", first, again)
	}

	// A connection that died while idle (as if the broker dropped it) fails
	// its next round trip; the send is retried on a new connection.
	_ = first[0].nc.Close()
	send("m3")
	after := idleConns(b, addr)
	if len(after) != 1 || after[0] == first[0] {
		t.Fatalf("the broken connection was not replaced: idle %v", after)
	}
	if got := endOffset(t, addr, topic); got != 3 {
		t.Fatalf("topic holds %d records after 3 single-message sends, want 3", got)
	}

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(idleConns(b, addr)); n != 0 {
		t.Fatalf("%d idle produce connections left after Close", n)
	}
	if _, err := b.conns.get(ctx, addr); !errors.Is(err, driver.ErrClosed) {
		t.Fatalf("get after Close: %v, want ErrClosed", err)
	}
}

func TestProduceToALeaderWithoutAddressIsRetriable(t *testing.T) {
	b := &Broker{conns: &produceConns{idle: map[string][]*produceConn{}}}
	errs := b.produce(context.Background(), "", "t", []*chunk{{partition: 3}}, nil, 0)
	if len(errs) != 1 || !errors.Is(errs[0], kafkago.LeaderNotAvailable) || !retriable(errs[0]) {
		t.Fatalf("produce to no address: %v, want LeaderNotAvailable, retriable", errs)
	}
}

func TestExchangeEndsWhenItsContextEndsAndSpoilsTheConnection(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	c := &produceConn{nc: client, r: bufio.NewReader(client)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req := []byte{0, 0, 0, 4, 1, 2, 3, 4}
	go func() {
		// The broker takes the request and never answers; the caller
		// gives up.
		_, _ = io.ReadFull(server, make([]byte, len(req)))
		cancel()
	}()
	if _, err := c.exchange(ctx, req); err == nil {
		t.Fatal("exchange with no answer returned no error after its context ended")
	}
	if !c.spoiled {
		t.Fatal("a connection whose exchange was interrupted is not marked spoiled")
	}
}

func TestExchangeRejectsAnAnswerSizeOutOfBounds(t *testing.T) {
	for _, size := range []uint32{0, 3, maxResponse + 1} {
		client, server := net.Pipe()
		c := &produceConn{nc: client, r: bufio.NewReader(client)}
		go func() {
			_, _ = io.ReadFull(server, make([]byte, 4))
			_, _ = server.Write(binary.BigEndian.AppendUint32(nil, size))
		}()
		if _, err := c.exchange(context.Background(), []byte{0, 0, 0, 0}); !errors.Is(err, errMalformed) {
			t.Errorf("answer size %d: err %v, want errMalformed", size, err)
		}
		client.Close()
		server.Close()
	}
}
