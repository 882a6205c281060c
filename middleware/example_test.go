package middleware_test

import (
	"fmt"
	"log/slog"

	"golang.org/x/time/rate"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/router"
)

// The package's recommended order registers; the router panics, at Use,
// on an order that would poison on the first failure.
func Example() {
	client := memory.NewClient(memory.Options{})
	defer client.Close()
	store := middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{})

	r := router.New(client, router.Options{Logger: slog.New(slog.DiscardHandler)})
	r.Use(
		middleware.CorrelationID(),
		middleware.Poison(client, "orders.poison", middleware.PoisonOptions{}),
		middleware.Retry(middleware.RetryOptions{}),
		middleware.Dedup(store, middleware.DedupOptions{}),
		middleware.Throttle(rate.Limit(100), middleware.ThrottleOptions{Burst: 10}),
		middleware.Recover(),
	)
	fmt.Println("recommended order: registered")

	wrong := router.New(client, router.Options{})
	defer func() { fmt.Println(recover()) }()
	wrong.Use(middleware.Retry(middleware.RetryOptions{}), middleware.Poison(client, "orders.poison", middleware.PoisonOptions{}))
	// Output:
	// recommended order: registered
	// router: middleware order: middleware.Retry is outside middleware.Poison but must be inside it; the order, outermost first, is (telemetry.Middleware), (middleware.Poison), (middleware.Retry), (middleware.Dedup, middleware.Timeout, middleware.Recover, telemetry.Attempts) (docs/router.md): omnibus: invalid argument
}

// A constructor panics on a value it cannot use, naming the field.
func ExampleRetry_invalidOptions() {
	defer func() { fmt.Println(recover()) }()
	middleware.Retry(middleware.RetryOptions{MaxAttempts: -1})
	// Output: middleware: Retry: RetryOptions.MaxAttempts = -1: want 0 (default 5) or more: omnibus: invalid argument
}
