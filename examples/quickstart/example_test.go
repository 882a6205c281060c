package quickstart_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"time"

	_ "github.com/omnibusmq/omnibus/adapters/all" // mem://, kafka://, amqp://, postgres://
	"github.com/omnibusmq/omnibus/config"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

type order struct {
	ID     string `json:"id"`
	Amount int    `json:"amount"`
}

// The README's quick start, on mem:// (set OMNIBUS_URL to run it on another
// broker): open a client that must keep key order, run a router with the
// usual middleware, and handle JSON orders ordered by key.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	url := os.Getenv("OMNIBUS_URL")
	if url == "" {
		url = "mem://quickstart"
	}
	cfg := config.Config{URL: url, Require: []string{"ordering"}} // fail fast if the broker can't keep key order
	client, err := cfg.Open(ctx)                                  // (or pubsub.Open(ctx, url))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	store := middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{})
	charged := make(chan order)
	chargeOrder := func(ctx context.Context, m *pubsub.Message, o order) error {
		charged <- o
		return nil
	}

	r := router.New(client, router.Options{Logger: slog.New(slog.DiscardHandler)})
	r.Use(middleware.Poison(client, "orders.poison", middleware.PoisonOptions{}), // give up → poison topic, with the reason
		middleware.Retry(middleware.RetryOptions{MaxAttempts: 5}), // exponential backoff, full jitter
		middleware.Dedup(store, middleware.DedupOptions{}),        // by message ID, marked after success
		middleware.Recover()) // a panic is an error, not a crash
	r.Handle("orders.created", "billing", router.JSON(chargeOrder), router.Concurrency(32), router.OrderedByKey(), router.Group("billing"))
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }() // returns after ctx ends and every in-flight message was acked or nacked
	<-r.Running()

	if err := client.Publish(ctx, "orders.created", &pubsub.Message{Key: "customer-7", Payload: []byte(`{"id":"o-1","amount":42}`)}); err != nil {
		log.Fatal(err)
	}
	select {
	case o := <-charged:
		fmt.Println("charged", o.ID, o.Amount)
	case <-time.After(10 * time.Second):
		fmt.Println("not charged")
	}
	cancel()
	if err := <-done; err != nil {
		log.Fatal(err)
	}
	// Output: charged o-1 42
}
