package pubsub_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"

	_ "github.com/omnibusmq/omnibus/adapters/memory"
)

// leaseBroker puts every message its subscriptions receive under one lease,
// as an adapter does for a partition assignment.
type leaseBroker struct {
	driver.Broker
	lease *driver.Lease
}

func (b leaseBroker) OpenSubscription(ctx context.Context, topic string, opts driver.SubscriptionOptions) (driver.Subscription, error) {
	s, err := b.Broker.OpenSubscription(ctx, topic, opts)
	if err != nil {
		return nil, err
	}
	return leaseSub{s, b.lease}, nil
}

type leaseSub struct {
	driver.Subscription
	lease *driver.Lease
}

func (s leaseSub) ReceiveBatch(ctx context.Context, max int) ([]*driver.Message, error) {
	msgs, err := s.Subscription.ReceiveBatch(ctx, max)
	for _, m := range msgs {
		m.Lease = s.lease
	}
	return msgs, err
}

func TestRevokedLeaseDropsBufferedDeliveriesAndFailsTheirSettlement(t *testing.T) {
	for _, settle := range []string{"Ack", "Nack"} {
		t.Run(settle, func(t *testing.T) {
			ctx := context.Background()
			mem, err := pubsub.Open(ctx, "mem://lease-"+settle)
			if err != nil {
				t.Fatal(err)
			}
			defer mem.Close()
			lease := &driver.Lease{}
			c := pubsub.NewClient(leaseBroker{mem.Driver(), lease})
			defer c.Close()
			s, err := c.Subscribe(ctx, "t", pubsub.Group("g"), pubsub.Prefetch(64))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			msgs := make([]*pubsub.Message, 50)
			for i := range msgs {
				msgs[i] = &pubsub.Message{Payload: []byte("x")}
			}
			if err := c.Publish(ctx, "t", msgs...); err != nil {
				t.Fatal(err)
			}
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			d, err := s.Receive(rctx)
			if err != nil {
				t.Fatal(err)
			}
			lease.Revoke()
			if settle == "Ack" {
				err = d.Ack()
			} else {
				err = d.Nack(0)
			}
			if !errors.Is(err, pubsub.ErrRevoked) {
				t.Fatalf("%s of a delivery whose lease was revoked: %v, want ErrRevoked", settle, err)
			}
			// Every other message is buffered or still in the adapter under
			// the same revoked lease: none may be handed out.
			short, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
			defer cancel2()
			if d, err := s.Receive(short); err == nil {
				t.Fatalf("received %s after its lease was revoked", d.Message.ID)
			} else if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("receive after revoke: %v, want the context's deadline", err)
			}
		})
	}
}
