package router_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
	"github.com/omnibusmq/omnibus/router/routertest"
)

// HandleBatch runs every registered middleware for each message of a batch
// that succeeds, not only in the one-by-one fallback after an error: a
// middleware sees each message once, and Dedup keeps a duplicate out of the
// next batch.
func TestHandleBatchRunsMiddlewarePerMessageOnSuccess(t *testing.T) {
	c := newClient(t)
	var mu sync.Mutex
	seen := map[string]int{}
	counter := router.Middleware(func(next router.Handler) router.Handler {
		return func(ctx context.Context, m *pubsub.Message) error {
			mu.Lock()
			seen[m.ID]++
			mu.Unlock()
			return next(ctx, m)
		}
	})
	var batched atomic.Int64
	handled := map[string]int{}
	all := make(chan struct{})
	lastDone := make(chan struct{})
	const n = 50
	r := router.New(c, router.Options{})
	r.Use(counter, middleware.Dedup(middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{}), middleware.DedupOptions{}))
	r.HandleBatch("clicks", "loader", func(ctx context.Context, msgs []*pubsub.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if len(msgs) > 1 {
			batched.Add(1)
		}
		for _, m := range msgs {
			handled[m.ID]++
			if m.ID == "last" {
				close(lastDone)
			}
		}
		if len(handled) == n {
			select {
			case <-all:
			default:
				close(all)
			}
		}
		return nil
	}, router.MaxBatch(10))
	routertest.Start(t, r)
	var msgs []*pubsub.Message
	for i := 0; i < n; i++ {
		msgs = append(msgs, &pubsub.Message{ID: fmt.Sprintf("m%d", i)})
	}
	routertest.Publish(t, c, "clicks", msgs...)
	wait(t, all, "every message in a batch")
	// The same IDs again: Dedup must keep them from the batch handler.
	var dups []*pubsub.Message
	for i := 0; i < n; i++ {
		dups = append(dups, &pubsub.Message{ID: fmt.Sprintf("m%d", i)})
	}
	dups = append(dups, &pubsub.Message{ID: "last"})
	routertest.Publish(t, c, "clicks", dups...)
	wait(t, lastDone, "the last message (after the duplicates, batches run in order)")
	mu.Lock()
	defer mu.Unlock()
	if batched.Load() == 0 {
		t.Fatal("no batch had more than one message")
	}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("m%d", i)
		if seen[id] != 2 {
			t.Errorf("middleware saw %s %d times, want 2 (once per delivery)", id, seen[id])
		}
		if handled[id] != 1 {
			t.Errorf("batch handler got %s %d times, want 1 (Dedup skips the duplicate)", id, handled[id])
		}
	}
}
