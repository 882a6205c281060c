package middleware

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// leaseCtx is the context Dedup gives a handler under a claim: the parent's
// values and cancellation, ending at the lease deadline. It behaves as
// context.WithDeadline(parent, deadline), but builds that context (a timer
// and a registration with the parent) only when something needs it: the
// first call to Done, an Err once the deadline or the parent has ended, or
// a lookup of the context package's own keys (context.Cause,
// context.AfterFunc, a derived context). A handler that never waits on its
// context pays nothing for the lease; one that does gets exactly the
// standard library's behaviour.
//
// Until it is built, Err compares the clock with the deadline on each call,
// so a handler polling Err sees the lease end on time.
type leaseCtx struct {
	parent   context.Context
	deadline time.Time

	built atomic.Pointer[builtCtx]
	ended atomic.Bool // end was called: the context is cancelled
	mu    sync.Mutex  // serialises builds
}

type builtCtx struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func newLeaseCtx(parent context.Context, deadline time.Time) *leaseCtx {
	return &leaseCtx{parent: parent, deadline: deadline}
}

// build returns the real context, creating it on first use.
func (l *leaseCtx) build() context.Context {
	if b := l.built.Load(); b != nil {
		return b.ctx
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.built.Load(); b != nil {
		return b.ctx
	}
	ctx, cancel := context.WithDeadline(l.parent, l.deadline)
	l.built.Store(&builtCtx{ctx: ctx, cancel: cancel})
	if l.ended.Load() {
		cancel()
	}
	return ctx
}

// end cancels the context (the handler returned), like a CancelFunc. It
// sets ended before it looks for a built context, and build stores the
// context before it looks at ended: whichever comes second cancels.
func (l *leaseCtx) end() {
	l.ended.Store(true)
	if b := l.built.Load(); b != nil {
		b.cancel()
	}
}

func (l *leaseCtx) Deadline() (time.Time, bool) {
	if d, ok := l.parent.Deadline(); ok && d.Before(l.deadline) {
		return d, true
	}
	return l.deadline, true
}

func (l *leaseCtx) Done() <-chan struct{} { return l.build().Done() }

func (l *leaseCtx) Err() error {
	if b := l.built.Load(); b != nil {
		return b.ctx.Err()
	}
	if l.ended.Load() || l.parent.Err() != nil || time.Until(l.deadline) <= 0 {
		return l.build().Err()
	}
	return nil
}

func (l *leaseCtx) Value(key any) any {
	if b := l.built.Load(); b != nil {
		return b.ctx.Value(key)
	}
	if _, internal := key.(*int); internal {
		// The context package finds a context's canceller (for Cause,
		// AfterFunc and derived contexts) under an unexported *int key;
		// answering from the parent would point at the parent's. Build
		// the real context and let it answer.
		return l.build().Value(key)
	}
	return l.parent.Value(key)
}

func (l *leaseCtx) String() string {
	return "middleware.leaseCtx(deadline " + l.deadline.String() + ")"
}
