package pubsubtest

import (
	"context"
	"sync"

	"github.com/omnibusmq/omnibus/pubsub"
)

// Consume runs a Receive loop on every subscription at once and calls fn
// with the subscription's index and each delivery (from one goroutine per
// subscription, so fn must be safe for concurrent use; acking is fn's job).
// It returns when every loop has stopped: when ctx ends or a Receive fails.
// Tests end it by cancelling ctx once they have seen what they wait for.
func Consume(ctx context.Context, subs []*pubsub.Subscription, fn func(member int, d *pubsub.Delivery)) {
	var wg sync.WaitGroup
	for i, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				d, err := s.Receive(ctx)
				if err != nil {
					return
				}
				fn(i, d)
			}
		}()
	}
	wg.Wait()
}
