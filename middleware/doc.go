// Package middleware holds the router's middleware, all of one shape,
// func(router.Handler) router.Handler:
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
