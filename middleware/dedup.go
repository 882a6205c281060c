package middleware

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

// DedupStore remembers which message keys were processed.
//
// Implementations must be safe for concurrent use, and Claim must be atomic:
// of two concurrent Claims of one key at most one gets ClaimAcquired.
type DedupStore interface {
	// Claim tries to take key for processing for at most lease. It returns
	// ClaimAcquired (run the handler), ClaimDone (already processed: ack and skip),
	// or ClaimBusy (another delivery holds it now: nack with a delay, never run concurrently).
	Claim(ctx context.Context, key string, lease time.Duration) (ClaimResult, error)
	// Complete marks key processed; it is remembered for the store's TTL.
	Complete(ctx context.Context, key string) error
	// Release drops a claim after the handler failed, so a redelivery runs it again.
	Release(ctx context.Context, key string) error
}

// ClaimResult is the outcome of DedupStore.Claim.
type ClaimResult int

const (
	// ClaimAcquired: the caller holds the key for the lease and runs the handler.
	ClaimAcquired ClaimResult = iota + 1
	// ClaimBusy: another delivery holds an unexpired claim on the key.
	ClaimBusy
	// ClaimDone: the key was processed (Complete) within the store's TTL.
	ClaimDone
)

// String names the result.
func (r ClaimResult) String() string {
	switch r {
	case ClaimAcquired:
		return "acquired"
	case ClaimBusy:
		return "busy"
	case ClaimDone:
		return "done"
	}
	return fmt.Sprintf("ClaimResult(%d)", int(r))
}

// ErrBusy is wrapped by the error Dedup returns for a delivery whose key
// another delivery is processing right now.
var ErrBusy = errors.New("middleware: dedup: key is being processed by another delivery")

// DedupOptions configure Dedup. Zero values mean the defaults.
type DedupOptions struct {
	// Key returns the deduplication key of a message (default: its ID). An
	// empty key disables deduplication for that message.
	Key func(*pubsub.Message) string
	// Lease is how long a claim protects a key from concurrent duplicates
	// (default 1m). The handler's context ends when the lease does, so that
	// a duplicate can never run while the handler is still allowed to work;
	// keep it above the handler's longest legitimate run.
	Lease time.Duration
	// BusyDelay is the redelivery delay for a duplicate that found the key
	// busy (default 1s, at most Lease).
	BusyDelay time.Duration
	// StoreTimeout bounds Complete and Release when the handler's context
	// has ended (shutdown), so that the outcome is still recorded (default
	// 10s). Otherwise they run under the handler's context.
	StoreTimeout time.Duration
}

// Dedup skips messages whose key was already processed and never runs the
// handler for one key twice at the same time:
//
//   - Claim acquired: the handler runs. On success the key is marked done
//     (Complete) and the message acked; on failure the claim is released,
//     so a redelivery runs the handler again (a failed first attempt is never
//     mistaken for a duplicate). A key is never marked before its handler
//     succeeded.
//   - Claim done: the handler does not run; the message is acked.
//   - Claim busy (a concurrent duplicate): the handler does not run; Dedup
//     returns an error wrapping ErrBusy marked router.Redeliver(BusyDelay),
//     so the router nacks it with that delay (Retry and Poison pass it on)
//     and the redelivery finds the key done or free. It does not wait.
//
// A Claim error is returned (Retry retries it). A Complete error after the
// handler succeeded is logged and the message still acked: the claim then
// expires with its lease, and a later duplicate may run again. A panic in
// the handler releases the claim and is returned as a *PanicError.
func Dedup(store DedupStore, opts DedupOptions) router.Middleware {
	if opts.Key == nil {
		opts.Key = func(m *pubsub.Message) string { return m.ID }
	}
	if opts.Lease <= 0 {
		opts.Lease = time.Minute
	}
	if opts.BusyDelay <= 0 {
		opts.BusyDelay = time.Second
	}
	opts.BusyDelay = min(opts.BusyDelay, opts.Lease)
	if opts.StoreTimeout <= 0 {
		opts.StoreTimeout = 10 * time.Second
	}
	return func(next router.Handler) router.Handler {
		return func(ctx context.Context, m *pubsub.Message) error {
			key := opts.Key(m)
			if key == "" {
				return next(ctx, m)
			}
			res, err := store.Claim(ctx, key, opts.Lease)
			if err != nil {
				return fmt.Errorf("middleware: dedup: claim %q: %w", key, err)
			}
			switch res {
			case ClaimDone:
				logger(ctx).Debug("middleware: dedup: duplicate skipped", "id", m.ID, "key", key, "topic", m.Topic)
				return nil
			case ClaimBusy:
				return router.Redeliver(fmt.Errorf("message %q, key %q: %w", m.ID, key, ErrBusy), opts.BusyDelay)
			case ClaimAcquired:
			default:
				return fmt.Errorf("middleware: dedup: claim %q: store returned %v", key, res)
			}
			herr := runLeased(ctx, next, m, opts.Lease)
			sctx := ctx
			if ctx.Err() != nil {
				// Shutting down: still record the outcome, within bounds.
				var cancel context.CancelFunc
				sctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), opts.StoreTimeout)
				defer cancel()
			}
			if herr != nil {
				if err := store.Release(sctx, key); err != nil {
					logger(ctx).Error("middleware: dedup: release failed; redeliveries wait for the lease to expire",
						"id", m.ID, "key", key, "lease", opts.Lease, "error", err)
				}
				return herr
			}
			if err := store.Complete(sctx, key); err != nil {
				logger(ctx).Error("middleware: dedup: complete failed; the message is acked but a later duplicate may run again",
					"id", m.ID, "key", key, "error", err)
			}
			return nil
		}
	}
}

func runLeased(ctx context.Context, next router.Handler, m *pubsub.Message, lease time.Duration) (err error) {
	lctx, cancel := context.WithTimeout(ctx, lease)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			err = router.NewPanicError(p)
		}
	}()
	return next(lctx, m)
}

// MemoryDedupOptions configure NewMemoryDedupStore. Zero values mean the
// defaults.
type MemoryDedupOptions struct {
	// TTL is how long a completed key is remembered (default 1h).
	TTL time.Duration
	// MaxKeys bounds the completed keys remembered (default 100000); when
	// full, the oldest are forgotten first.
	MaxKeys int
	// Now is the clock (default time.Now); tests replace it.
	Now func() time.Time
}

// MemoryDedupStore is an in-process DedupStore: completed keys expire after
// TTL and at most MaxKeys are kept. It is safe for concurrent use. It
// protects one process only; use a shared store (Postgres, Redis) when
// several processes consume the same group.
type MemoryDedupStore struct {
	opts   MemoryDedupOptions
	mu     sync.Mutex
	claims map[string]time.Time // key → lease expiry
	done   map[string]*list.Element
	order  *list.List // of *doneKey, oldest completion first
}

type doneKey struct {
	key string
	at  time.Time
}

// NewMemoryDedupStore returns an empty store.
func NewMemoryDedupStore(opts MemoryDedupOptions) *MemoryDedupStore {
	if opts.TTL <= 0 {
		opts.TTL = time.Hour
	}
	if opts.MaxKeys <= 0 {
		opts.MaxKeys = 100000
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &MemoryDedupStore{opts: opts, claims: map[string]time.Time{}, done: map[string]*list.Element{}, order: list.New()}
}

// expire forgets completed keys older than the TTL. s.mu must be held.
func (s *MemoryDedupStore) expire(now time.Time) {
	for e := s.order.Front(); e != nil; e = s.order.Front() {
		dk := e.Value.(*doneKey)
		if now.Sub(dk.at) < s.opts.TTL {
			return
		}
		s.order.Remove(e)
		delete(s.done, dk.key)
	}
}

// Claim implements DedupStore.
func (s *MemoryDedupStore) Claim(ctx context.Context, key string, lease time.Duration) (ClaimResult, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(now)
	if _, ok := s.done[key]; ok {
		return ClaimDone, nil
	}
	if until, ok := s.claims[key]; ok && now.Before(until) {
		return ClaimBusy, nil
	}
	if len(s.claims) >= s.opts.MaxKeys {
		for k, until := range s.claims {
			if !now.Before(until) {
				delete(s.claims, k)
			}
		}
	}
	s.claims[key] = now.Add(lease)
	return ClaimAcquired, nil
}

// Complete implements DedupStore.
func (s *MemoryDedupStore) Complete(ctx context.Context, key string) error {
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.claims, key)
	if e, ok := s.done[key]; ok {
		e.Value.(*doneKey).at = now
		s.order.MoveToBack(e)
	} else {
		s.done[key] = s.order.PushBack(&doneKey{key: key, at: now})
	}
	for len(s.done) > s.opts.MaxKeys {
		e := s.order.Front()
		s.order.Remove(e)
		delete(s.done, e.Value.(*doneKey).key)
	}
	s.expire(now)
	return nil
}

// Release implements DedupStore.
func (s *MemoryDedupStore) Release(ctx context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.claims, key)
	return nil
}

// Len returns how many completed keys the store remembers now.
func (s *MemoryDedupStore) Len() int {
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(now)
	return len(s.done)
}
