package pubsub_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"

	_ "github.com/omnibusmq/omnibus/adapters/memory"
)

// directBroker makes every subscription of the wrapped broker a
// driver.DirectReceiver, so that the portable layer receives on the
// caller's goroutine instead of in a fetch loop.
type directBroker struct{ driver.Broker }

func (b directBroker) OpenSubscription(ctx context.Context, topic string, opts driver.SubscriptionOptions) (driver.Subscription, error) {
	s, err := b.Broker.OpenSubscription(ctx, topic, opts)
	if err != nil {
		return nil, err
	}
	return directSub{s}, nil
}

type directSub struct{ driver.Subscription }

func (directSub) DirectReceive() bool { return true }

func openDirect(ctx context.Context, name string) (*pubsub.Client, error) {
	c, err := pubsub.Open(ctx, "mem://"+name)
	if err != nil {
		return nil, err
	}
	return pubsub.NewClient(directBroker{c.Driver()}), nil
}

func TestDirectReceiveConformance(t *testing.T) {
	pubsubtest.Run(t, pubsubtest.Harness{
		Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
			return openDirect(ctx, "direct-conformance")
		},
	})
}

func TestDirectReceiveConcurrentReceiversGetEachMessageOnceAndCloseWakesThem(t *testing.T) {
	ctx := context.Background()
	c, err := openDirect(ctx, "direct-concurrent")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.Subscribe(ctx, "t", pubsub.Group("g"), pubsub.Prefetch(16))
	if err != nil {
		t.Fatal(err)
	}
	const n, workers = 3000, 8
	got := make(chan string, n)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				d, err := s.Receive(ctx)
				if err != nil {
					if !errors.Is(err, pubsub.ErrClosed) {
						t.Errorf("Receive: %v, want ErrClosed after Close", err)
					}
					return
				}
				// Ack before reporting: once every ID is reported the
				// test closes the subscription, and a later Ack would
				// rightly fail with ErrClosed.
				if err := d.Ack(); err != nil {
					t.Errorf("Ack: %v", err)
				}
				got <- d.Message.ID
			}
		}()
	}
	msgs := make([]*pubsub.Message, n)
	for i := range msgs {
		msgs[i] = &pubsub.Message{ID: fmt.Sprint(i)}
	}
	if err := c.Publish(ctx, "t", msgs...); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for len(seen) < n {
		id := <-got
		if seen[id] {
			t.Fatalf("message %s received twice", id)
		}
		seen[id] = true
	}
	// Every worker is now blocked in Receive (one of them inside the
	// driver's ReceiveBatch): Close must end them all.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

func TestDirectReceiveCancelledCallerPassesTheTurnOn(t *testing.T) {
	ctx := context.Background()
	c, err := openDirect(ctx, "direct-cancel")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := c.Subscribe(ctx, "t", pubsub.Group("g"))
	if err != nil {
		t.Fatal(err)
	}
	// A caller that gives up while holding the fetching turn must not
	// strand a caller that keeps waiting.
	cctx, cancel := context.WithCancel(ctx)
	first := make(chan error, 1)
	go func() {
		_, err := s.Receive(cctx)
		first <- err
	}()
	second := make(chan *pubsub.Delivery, 1)
	go func() {
		d, err := s.Receive(ctx)
		if err != nil {
			t.Errorf("Receive: %v", err)
		}
		second <- d
	}()
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Receive: %v, want context.Canceled", err)
	}
	if err := c.Publish(ctx, "t", &pubsub.Message{ID: "m1"}); err != nil {
		t.Fatal(err)
	}
	if d := <-second; d == nil || d.Message.ID != "m1" {
		t.Fatalf("second Receive got %v, want m1", d)
	}
}
