// Package middleware holds the router's middleware. Every constructor takes
// its required inputs as arguments and its tunables in one XxxOptions
// struct value whose zero value means the documented defaults (none when
// there is nothing to tune), and panics, like router.Handle, with an error
// wrapping pubsub.ErrInvalid that names the field, on a value it cannot use.
// Constructors of other values that can fail (pgdedup.New, telemetry.New)
// return that error instead.
//
// Where their order decides correctness they return a router.Ranked, and
// the router panics at registration on a wrong order (see router.Rank):
//
//   - Recover turns a handler panic into an error carrying the stack.
//   - Retry retries failures with exponential backoff and full jitter, in
//     process or by broker redelivery with a delay.
//   - Poison moves a message that failed for good to a poison topic with a
//     fault record, then acks it; it never drops one.
//   - Dedup runs a message's handler at most once per key at a time and
//     skips keys already processed, marking a key done only after success.
//   - Timeout, CorrelationID and Throttle.
//
// Recommended order (outermost first; see docs/router.md):
//
//	r.Use(
//		middleware.CorrelationID(),
//		middleware.Poison(client, "orders.poison", middleware.PoisonOptions{}),
//		middleware.Retry(middleware.RetryOptions{}),
//		middleware.Dedup(store, middleware.DedupOptions{}),
//		middleware.Recover(),
//	)
package middleware
