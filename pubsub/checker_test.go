package pubsub_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// checkingBroker refuses messages whose Key is over 8 bytes
// (driver.Traits.CheckMessage) and counts what reaches SendBatch.
type checkingBroker struct {
	driver.Broker
	sent atomic.Int64
}

func (b *checkingBroker) Traits() driver.Traits {
	tr := b.Broker.Traits()
	tr.CheckMessage = b.CheckMessage
	return tr
}

func (b *checkingBroker) CheckMessage(m *driver.Message) error {
	if len(m.Key) > 8 {
		return fmt.Errorf("Key %q is %d bytes, over the limit of 8: %w", m.Key, len(m.Key), driver.ErrInvalid)
	}
	return nil
}

func (b *checkingBroker) SendBatch(ctx context.Context, topic string, msgs []*driver.Message) error {
	b.sent.Add(int64(len(msgs)))
	return b.Broker.SendBatch(ctx, topic, msgs)
}

func TestAMessageTheAdapterCannotCarryFailsItsPublishAloneBeforeAnythingIsSent(t *testing.T) {
	b := &checkingBroker{Broker: memory.New(memory.Options{Buffer: 100})}
	c := pubsub.NewClient(b)
	defer c.Close()
	ctx := context.Background()
	err := c.Publish(ctx, "t", &pubsub.Message{Key: "ok"}, &pubsub.Message{Key: "far-too-long"})
	if !errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), "message 1") || !strings.Contains(err.Error(), "Key") {
		t.Fatalf("Publish = %v, want ErrInvalid naming message 1 and its Key", err)
	}
	if n := b.sent.Load(); n != 0 {
		t.Fatalf("%d messages reached SendBatch, want none of the refused call", n)
	}
	if err := c.Publish(ctx, "t", &pubsub.Message{Key: "ok"}); err != nil {
		t.Fatalf("a valid message after a refused one: %v", err)
	}
	if n := b.sent.Load(); n != 1 {
		t.Fatalf("%d messages sent, want 1", n)
	}
}
