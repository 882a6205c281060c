package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"runtime/debug"
	"slices"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
)

// Publisher is what the router publishes output messages through: a
// *pubsub.Client, or anything with the same Publish method.
type Publisher interface {
	Publish(ctx context.Context, topic string, msgs ...*pubsub.Message) error
}

// HandlerInfo describes the handler a context belongs to. The router puts
// it in every handler's context; middleware reads it with Info.
type HandlerInfo struct {
	// Topic the handler consumes.
	Topic string
	// Name is the handler's name, which is also its consumer group.
	Name string
	// Client is the router's client (for Capabilities).
	Client *pubsub.Client
	// Publisher publishes output messages (Options.Publisher, default Client).
	Publisher Publisher
	// Logger is the router's logger.
	Logger *slog.Logger

	draining <-chan struct{}
}

type infoKey struct{}
type correlationKey struct{}

// Info returns the HandlerInfo of the handler ctx was given to, or nil when
// ctx does not come from a router.
func Info(ctx context.Context) *HandlerInfo {
	i, _ := ctx.Value(infoKey{}).(*HandlerInfo)
	return i
}

// HandlerName returns the name (consumer group) of the handler ctx was given
// to, or "" outside a router.
func HandlerName(ctx context.Context) string {
	if i := Info(ctx); i != nil {
		return i.Name
	}
	return ""
}

// Draining returns a channel that is closed when the router starts shutting
// down (it stopped receiving; in-flight handlers may still finish). Middleware
// that waits (retry backoff) selects on it to give the message back to the
// broker instead of holding up the shutdown. Outside a router it returns nil,
// a channel that never fires.
func Draining(ctx context.Context) <-chan struct{} {
	if i := Info(ctx); i != nil {
		return i.draining
	}
	return nil
}

// WithCorrelationID returns ctx carrying the correlation ID id; Publish
// stamps it on output messages. The CorrelationID middleware calls it.
func WithCorrelationID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, correlationKey{}, id)
}

// CorrelationID returns the correlation ID carried by ctx, or "".
func CorrelationID(ctx context.Context) string {
	id, _ := ctx.Value(correlationKey{}).(string)
	return id
}

// ErrNoRouter is returned by Publish when ctx does not come from a router
// handler. It wraps pubsub.ErrInvalid.
var ErrNoRouter = fmt.Errorf("router: context does not come from a router handler: %w", pubsub.ErrInvalid)

// Publish publishes output messages from inside a handler through the
// router's Publisher. When ctx carries a correlation ID (see the
// CorrelationID middleware), every message without an
// omnibus-correlation-id header gets it.
//
// Publish happens at once, not when the handler succeeds: if the handler then
// fails and is retried, the outputs are published again. Give outputs a
// deterministic ID (for example derived from the input's ID) so that
// consumers deduplicate them.
func Publish(ctx context.Context, topic string, msgs ...*pubsub.Message) error {
	i := Info(ctx)
	if i == nil || i.Publisher == nil {
		return fmt.Errorf("router: publish to %q: %w", topic, ErrNoRouter)
	}
	if cid := CorrelationID(ctx); cid != "" {
		msgs = withCorrelation(msgs, cid)
	}
	if err := i.Publisher.Publish(ctx, topic, msgs...); err != nil {
		return fmt.Errorf("router: handler %q: publish output: %w", i.Name, err)
	}
	return nil
}

// withCorrelation returns msgs with the correlation ID cid on every message
// that has none. Such a message is replaced by a copy with its own Metadata
// map, so that a map the caller shares (a template) is never written; its
// empty ID is filled first, in the caller's message, as Publish promises.
func withCorrelation(msgs []*pubsub.Message, cid string) []*pubsub.Message {
	out, copied := msgs, false
	for i, m := range msgs {
		if m == nil {
			continue
		}
		if _, ok := m.Metadata[pubsub.MetaCorrelationID]; ok {
			continue
		}
		if m.ID == "" {
			m.ID = pubsub.NewID()
		}
		if !copied {
			out, copied = slices.Clone(msgs), true
		}
		cp := *m
		cp.Metadata = make(map[string]string, len(m.Metadata)+1)
		maps.Copy(cp.Metadata, m.Metadata)
		cp.Metadata[pubsub.MetaCorrelationID] = cid
		out[i] = &cp
	}
	return out
}

// redeliverError asks the router to nack with a specific delay.
type redeliverError struct {
	err   error
	delay time.Duration
}

func (e *redeliverError) Error() string {
	return fmt.Sprintf("%v (redeliver in %v)", e.err, e.delay)
}
func (e *redeliverError) Unwrap() error { return e.err }

// Redeliver marks err as a request to give the message back to the broker
// for redelivery after delay, rather than a failure: the router nacks with
// that delay, and the Retry and Poison middleware pass it on untouched.
// Retry (redelivery mode) and Dedup (a concurrent duplicate) return it.
// Redeliver(nil, d) is nil.
func Redeliver(err error, delay time.Duration) error {
	if err == nil {
		return nil
	}
	if delay < 0 {
		delay = 0
	}
	return &redeliverError{err: err, delay: delay}
}

// RedeliverDelay reports whether err (or an error it wraps) was marked with
// Redeliver, and the delay it asked for.
func RedeliverDelay(err error) (time.Duration, bool) {
	var r *redeliverError
	if errors.As(err, &r) {
		return r.delay, true
	}
	return 0, false
}

// PanicError is a recovered handler panic: the value and the stack of the
// goroutine that panicked. The Recover middleware and the router's own last
// line of defence return it; Poison records it with reason "panic".
type PanicError struct {
	Value any
	Stack []byte
}

// NewPanicError records a recovered value with the current stack; call it in
// the deferred function that recovered.
func NewPanicError(v any) *PanicError { return &PanicError{Value: v, Stack: debug.Stack()} }

// Error reports the panic value followed by the stack.
func (e *PanicError) Error() string {
	return fmt.Sprintf("panic: %v\n\n%s", e.Value, e.Stack)
}

// Unwrap returns the panic value when it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}
