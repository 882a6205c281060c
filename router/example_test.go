package router_test

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

// With adds middleware to one handler only, inside the router's own; Group
// names the consumer group apart from the handler's name.
func ExampleWith() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := memory.NewClient(memory.Options{})
	defer client.Close()

	var mu sync.Mutex
	var trail []string
	tag := func(name string) router.Middleware {
		return func(next router.Handler) router.Handler {
			return func(ctx context.Context, m *pubsub.Message) error {
				mu.Lock()
				trail = append(trail, name)
				mu.Unlock()
				return next(ctx, m)
			}
		}
	}
	done := make(chan struct{})
	r := router.New(client, router.Options{Logger: slog.New(slog.DiscardHandler)})
	r.Use(tag("router"))
	r.Handle("orders", "audit", func(ctx context.Context, m *pubsub.Message) error {
		close(done)
		return nil
	}, router.With(tag("audit-only")), router.Group("audit-v1"))
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	_ = client.Publish(ctx, "orders", &pubsub.Message{Payload: []byte("{}")})
	<-done
	mu.Lock()
	fmt.Println(strings.Join(trail, " → "))
	mu.Unlock()
	// Output: router → audit-only
}

// HandleBatch passes up to MaxBatch messages at once, waiting at most
// MaxWait for a batch to fill; every middleware still runs for each message.
func ExampleRouter_HandleBatch() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := memory.NewClient(memory.Options{})
	defer client.Close()

	var msgs []*pubsub.Message
	for _, id := range []string{"a", "b", "c"} {
		msgs = append(msgs, &pubsub.Message{ID: id})
	}
	got := make(chan []string, 3)
	r := router.New(client, router.Options{Logger: slog.New(slog.DiscardHandler)})
	r.HandleBatch("clicks", "loader", func(ctx context.Context, ms []*pubsub.Message) error {
		var ids []string
		for _, m := range ms {
			ids = append(ids, m.ID)
		}
		got <- ids
		return nil
	}, router.MaxBatch(3), router.MaxWait(time.Minute))
	go func() { _ = r.Run(ctx) }()
	<-r.Running()
	_ = client.Publish(ctx, "clicks", msgs...)
	ids := <-got
	sort.Strings(ids)
	fmt.Println(ids)
	// Output: [a b c]
}
