package middleware

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

// PanicError is a recovered panic with its stack (the same type the router
// returns for a panic that no Recover caught).
type PanicError = router.PanicError

// Recover turns a panic in the wrapped handler into a *PanicError carrying
// the panic value and the stack, so that the middleware outside it (Retry,
// Poison) sees an ordinary error. It is not permanent: Retry retries it
// unless its classifier says otherwise. Its rank is router.RankAttempt:
// inside Retry and Poison (Use panics otherwise); place it innermost.
func Recover() router.Ranked {
	return router.Ranked{Name: "middleware.Recover", Rank: router.RankAttempt, Middleware: func(next router.Handler) router.Handler {
		return func(ctx context.Context, m *pubsub.Message) (err error) {
			defer func() {
				if p := recover(); p != nil {
					err = router.NewPanicError(p)
				}
			}()
			return next(ctx, m)
		}
	}}
}

// Timeout gives each call of the wrapped handler a context that ends after d.
// Middleware outside it keeps its own (parent) context: a retry after a
// timeout gets a fresh d. An error returned because the deadline passed is
// wrapped to say so (errors.Is(err, context.DeadlineExceeded) holds).
//
// It panics if d is not positive. Its rank is router.RankAttempt: inside
// Retry, so that each attempt gets d (Use panics otherwise).
func Timeout(d time.Duration) router.Ranked {
	if d <= 0 {
		invalid("Timeout(%v): want a positive duration", d)
	}
	return router.Ranked{Name: "middleware.Timeout", Rank: router.RankAttempt, Middleware: func(next router.Handler) router.Handler {
		return func(ctx context.Context, m *pubsub.Message) error {
			tctx, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			err := next(tctx, m)
			if err != nil && ctx.Err() == nil && errors.Is(tctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("middleware: handler timed out after %v: %w", d, err)
			}
			return err
		}
	}}
}

// CorrelationID puts the message's correlation ID (its
// omnibus-correlation-id header, or else its ID, which starts a new chain)
// in the handler's context, where router.CorrelationID reads it and
// router.Publish stamps it on every output message. It has no rank: place
// it outermost so that everything inside sees the ID.
func CorrelationID() router.Middleware {
	return func(next router.Handler) router.Handler {
		return func(ctx context.Context, m *pubsub.Message) error {
			id := m.Metadata[pubsub.MetaCorrelationID]
			if id == "" {
				id = m.ID
			}
			return next(router.WithCorrelationID(ctx, id), m)
		}
	}
}

// ThrottleOptions configure Throttle. Zero values mean the defaults;
// Throttle panics on a negative value.
type ThrottleOptions struct {
	// Burst is the most messages let through at once (default 1).
	Burst int
}

// Throttle limits each handler it wraps to limit messages per second with
// bursts of up to o.Burst (golang.org/x/time/rate): a message waits for its
// token before the handler runs. Each wrapped handler has its own limiter
// (Use(Throttle(...)) limits every handler separately). If ctx ends while
// waiting, the error is returned and the message nacked.
//
// It panics if limit is not positive (rate.Inf lets everything through) or
// o.Burst is negative. It has no rank: it may go anywhere in the chain
// (inside Retry it spaces the attempts too).
func Throttle(limit rate.Limit, o ThrottleOptions) router.Middleware {
	switch {
	case !(limit > 0):
		invalid("Throttle: limit = %v: want a positive rate (rate.Inf for none)", limit)
	case o.Burst < 0:
		invalid("Throttle: ThrottleOptions.Burst = %d: want 0 (default 1) or more", o.Burst)
	}
	burst := o.Burst
	if burst == 0 {
		burst = 1
	}
	return func(next router.Handler) router.Handler {
		lim := rate.NewLimiter(limit, burst)
		return func(ctx context.Context, m *pubsub.Message) error {
			if err := lim.Wait(ctx); err != nil {
				return fmt.Errorf("middleware: throttle: %w", err)
			}
			return next(ctx, m)
		}
	}
}
