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
// unless its classifier says otherwise. Place it innermost.
func Recover() router.Middleware {
	return func(next router.Handler) router.Handler {
		return func(ctx context.Context, m *pubsub.Message) (err error) {
			defer func() {
				if p := recover(); p != nil {
					err = router.NewPanicError(p)
				}
			}()
			return next(ctx, m)
		}
	}
}

// Timeout gives each call of the wrapped handler a context that ends after d.
// Middleware outside it keeps its own (parent) context: a retry after a
// timeout gets a fresh d. An error returned because the deadline passed is
// wrapped to say so (errors.Is(err, context.DeadlineExceeded) holds).
func Timeout(d time.Duration) router.Middleware {
	return func(next router.Handler) router.Handler {
		return func(ctx context.Context, m *pubsub.Message) error {
			tctx, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			err := next(tctx, m)
			if err != nil && ctx.Err() == nil && errors.Is(tctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("middleware: handler timed out after %v: %w", d, err)
			}
			return err
		}
	}
}

// CorrelationID puts the message's correlation ID (its
// omnibus-correlation-id header, or else its ID, which starts a new chain)
// in the handler's context, where router.CorrelationID reads it and
// router.Publish stamps it on every output message.
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

// Throttle limits each handler it wraps to limit messages per second with
// bursts of up to burst (golang.org/x/time/rate): a message waits for its
// token before the handler runs. Each wrapped handler has its own limiter
// (Use(Throttle(...)) limits every handler separately). If ctx ends while
// waiting, the error is returned and the message nacked.
func Throttle(limit rate.Limit, burst int) router.Middleware {
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
