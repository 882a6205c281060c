package pubsub_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// flakyAckBroker is the memory broker whose subscriptions fail their first
// failures SendAcks/SendNacks calls with a transient error, as an adapter
// does when its connection drops or the database cancels a transaction.
type flakyAckBroker struct {
	driver.Broker
	inline   bool
	failures int
}

func (b *flakyAckBroker) Traits() driver.Traits {
	tr := b.Broker.Traits()
	tr.InlineAcks = b.inline
	return tr
}

func (b *flakyAckBroker) OpenSubscription(ctx context.Context, topic string, opts driver.SubscriptionOptions) (driver.Subscription, error) {
	s, err := b.Broker.OpenSubscription(ctx, topic, opts)
	if err != nil {
		return nil, err
	}
	return &flakyAckSub{Subscription: s, left: b.failures}, nil
}

type flakyAckSub struct {
	driver.Subscription
	mu   sync.Mutex
	left int
}

func (s *flakyAckSub) fail() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.left > 0 {
		s.left--
		return driver.Transient(errors.New("connection reset"))
	}
	return nil
}

func (s *flakyAckSub) SendAcks(ctx context.Context, ids []driver.AckID) error {
	if err := s.fail(); err != nil {
		return err
	}
	return s.Subscription.SendAcks(ctx, ids)
}

// An ack that fails with a transient error is sent again, not only logged:
// the acked message is not redelivered to the group after Close.
func TestTransientAckFailureIsRetried(t *testing.T) {
	cases := []struct {
		name   string
		inline bool
	}{
		{"batched-acks", false},
		{"inline-acks", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			c := pubsub.NewClient(&flakyAckBroker{Broker: memory.New(memory.Options{}), inline: tc.inline, failures: 2})
			defer c.Close()
			s, err := c.Subscribe(ctx, "orders", pubsub.Group("billing"))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Publish(ctx, "orders", &pubsub.Message{ID: "m1"}); err != nil {
				t.Fatal(err)
			}
			d, err := s.Receive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Ack(); err != nil {
				t.Fatalf("Ack: %v", err)
			}
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			s2, err := c.Subscribe(ctx, "orders", pubsub.Group("billing"))
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			if err := c.Publish(ctx, "orders", &pubsub.Message{ID: "m2"}); err != nil {
				t.Fatal(err)
			}
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			d2, err := s2.Receive(rctx)
			if err != nil {
				t.Fatal(err)
			}
			if d2.Message.ID != "m2" {
				t.Fatalf("received %q after its ack failed transiently and Close; want m2 (m1 was acked)", d2.Message.ID)
			}
		})
	}
}
