package memory_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/pubsub"
)

func TestPublishBlocksWhenGroupQueueIsFullAndResumesOnAck(t *testing.T) {
	ctx := context.Background()
	c := memory.NewClient(memory.Options{Buffer: 3})
	defer c.Close()
	sub, err := c.Subscribe(ctx, "t", pubsub.Group("g"), pubsub.Prefetch(1))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for i := 0; i < 3; i++ {
		if err := c.Publish(ctx, "t", &pubsub.Message{}); err != nil {
			t.Fatal(err)
		}
	}
	// Full: a publish with a deadline gives up with the context's error and names the group.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	err = c.Publish(short, "t", &pubsub.Message{ID: "blocked"})
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("publish to full queue: %v, want DeadlineExceeded", err)
	}
	// A publish that waits completes once a delivery is acked.
	done := make(chan error, 1)
	go func() { done <- c.Publish(ctx, "t", &pubsub.Message{ID: "waits"}) }()
	d, err := sub.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("publish returned %v before any ack freed room", err)
	default:
	}
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("publish still blocked after an ack freed room")
	}
}

func TestMessagesPublishedBeforeFirstGroupAreKeptForIt(t *testing.T) {
	ctx := context.Background()
	c := memory.NewClient(memory.Options{})
	defer c.Close()
	if err := c.Publish(ctx, "dlq", &pubsub.Message{ID: "early"}); err != nil {
		t.Fatal(err)
	}
	sub, err := c.Subscribe(ctx, "dlq", pubsub.Group("ops"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	d, err := sub.Receive(rctx)
	if err != nil {
		t.Fatalf("the message published before any group was lost: %v", err)
	}
	if d.Message.ID != "early" {
		t.Errorf("got %q", d.Message.ID)
	}
}

func TestSameNameSharesBrokerAndConflictingOptionsFail(t *testing.T) {
	ctx := context.Background()
	a, err := pubsub.Open(ctx, "mem://shared-test")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := pubsub.Open(ctx, "mem://shared-test")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sub, err := b.Subscribe(ctx, "t", pubsub.Group("g"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := a.Publish(ctx, "t", &pubsub.Message{ID: "across"}); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if d, err := sub.Receive(rctx); err != nil || d.Message.ID != "across" {
		t.Fatalf("client b did not see client a's message: %v", err)
	}
	_, err = pubsub.Open(ctx, "mem://shared-test?buffer=7")
	if !errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), "buffer=7") {
		t.Errorf("conflicting options: %v, want ErrInvalid naming buffer=7", err)
	}
}

func TestClosingOneClientLeavesSharedBrokerToOthers(t *testing.T) {
	ctx := context.Background()
	a, _ := pubsub.Open(ctx, "mem://refcount")
	b, _ := pubsub.Open(ctx, "mem://refcount")
	defer b.Close()
	sub, err := b.Subscribe(ctx, "t", pubsub.Group("g"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Publish(ctx, "t", &pubsub.Message{ID: "still"}); err != nil {
		t.Fatalf("publish on b after a closed: %v", err)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := sub.Receive(rctx); err != nil {
		t.Fatalf("receive on b after a closed: %v", err)
	}
}

// The broker copies on publish: a caller changing its payload or metadata
// after Publish returns changes nothing delivered; payloads packed into a
// shared buffer cannot reach each other through append; and each delivery
// has its own metadata map.
func TestPublishCopiesAndDeliveriesAreIsolated(t *testing.T) {
	ctx := context.Background()
	c := memory.NewClient(memory.Options{})
	defer c.Close()
	s1, err := c.Subscribe(ctx, "t", pubsub.Group("g1"))
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	s2, err := c.Subscribe(ctx, "t", pubsub.Group("g2"))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	p1, p2 := []byte("one"), []byte("two")
	meta := map[string]string{"h": "v"}
	if err := c.Publish(ctx, "t", &pubsub.Message{ID: "1", Payload: p1, Metadata: meta}, &pubsub.Message{ID: "2", Payload: p2}); err != nil {
		t.Fatal(err)
	}
	p1[0], p2[0], meta["h"] = 'X', 'Y', "changed"
	first, err := s1.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(first.Message.Payload); got != "one" || first.Message.Metadata["h"] != "v" {
		t.Fatalf("first delivery: payload %q, h=%q; want \"one\", \"v\" (publish must copy)", got, first.Message.Metadata["h"])
	}
	// A handler appending to its payload or writing its metadata must not
	// reach the next message's payload or another group's delivery.
	_ = append(first.Message.Payload, "!!!"...)
	first.Message.Metadata["h"] = "handler"
	second, err := s1.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(second.Message.Payload); got != "two" {
		t.Fatalf("second payload %q after an append to the first, want \"two\"", got)
	}
	other, err := s2.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if other.Message.Metadata["h"] != "v" {
		t.Fatalf("other group's metadata h=%q, want \"v\"", other.Message.Metadata["h"])
	}
	for _, d := range []*pubsub.Delivery{first, second, other} {
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
	}
}
