package middleware

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
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

// DedupOptions configure Dedup. Zero values mean the defaults; Dedup panics
// on a negative duration, naming the field.
type DedupOptions struct {
	// Key returns the deduplication key of a message (default: its ID). An
	// empty key disables deduplication for that message.
	Key func(*pubsub.Message) string
	// Lease is how long a claim protects a key from concurrent duplicates
	// (default 1m). The handler's context ends when the lease does (at most
	// Lease/64 earlier: claims made that close together under one parent
	// context share one deadline), so that a duplicate can never run while
	// the handler is still allowed to work; keep it above the handler's
	// longest legitimate run.
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
//
// It panics if store is nil or a duration in opts is negative. Its rank is
// router.RankAttempt: inside Retry and Poison (Use panics otherwise).
func Dedup(store DedupStore, opts DedupOptions) router.Ranked {
	switch {
	case store == nil:
		invalid("Dedup: the store is nil")
	case opts.Lease < 0:
		invalid("Dedup: DedupOptions.Lease = %v: want 0 (default 1m) or more", opts.Lease)
	case opts.BusyDelay < 0:
		invalid("Dedup: DedupOptions.BusyDelay = %v: want 0 (default 1s) or more", opts.BusyDelay)
	case opts.StoreTimeout < 0:
		invalid("Dedup: DedupOptions.StoreTimeout = %v: want 0 (default 10s) or more", opts.StoreTimeout)
	}
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
	// The memory store on the real clock is called directly: the claim
	// hands back its entry, so Complete needs no lookup, and one clock
	// reading gives both the claim's expiry and the handler's deadline.
	mem, _ := store.(*MemoryDedupStore)
	if mem != nil && !mem.realClock {
		mem = nil
	}
	leases := &leaseContexts{slack: opts.Lease / 64}
	return router.Ranked{Name: "middleware.Dedup", Rank: router.RankAttempt, Middleware: func(next router.Handler) router.Handler {
		return func(ctx context.Context, m *pubsub.Message) error {
			key := opts.Key(m)
			if key == "" {
				return next(ctx, m)
			}
			var (
				res      ClaimResult
				err      error
				deadline time.Time
				held     memClaim
			)
			if mem != nil {
				res, held, deadline, err = mem.claim(ctx, key, opts.Lease)
			} else {
				// The handler's context ends no later than the store's
				// claim: its deadline is taken before the claim's.
				deadline = time.Now().Add(opts.Lease)
				res, err = store.Claim(ctx, key, opts.Lease)
			}
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
			herr := runLeased(leases.context(ctx, deadline), next, m)
			if mem != nil {
				if herr != nil {
					mem.release(held, key)
				} else {
					mem.complete(key)
				}
				return herr
			}
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
	}}
}

// runLeased runs next under lctx, turning a panic into a *PanicError.
func runLeased(lctx context.Context, next router.Handler, m *pubsub.Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = router.NewPanicError(p)
		}
	}()
	return next(lctx, m)
}

// leaseContexts hands out the handler contexts that end with a claim's
// lease. A context derived per message would cost a timer and a
// registration with its parent for every message; instead, claims under
// one parent context whose deadlines fall within slack of each other share
// one derived context whose deadline is the earliest of theirs, so a
// handler's context ends at most slack before its own lease. A parent whose
// own deadline comes first is used as it is.
type leaseContexts struct {
	slack time.Duration
	cur   atomic.Pointer[leaseContext]
}

// leaseContext is one shared lease context.
type leaseContext struct {
	parent   context.Context
	ctx      context.Context
	deadline time.Time
	// cancel is never called early: handlers may still run under ctx, which
	// ends by itself at deadline (releasing its timer) or with parent.
	cancel context.CancelFunc
}

// context returns a context that ends no later than deadline and with
// parent, carrying parent's values.
func (l *leaseContexts) context(parent context.Context, deadline time.Time) context.Context {
	if d, ok := parent.Deadline(); ok && !d.After(deadline) {
		return parent
	}
	if c := l.cur.Load(); c != nil && sameContext(c.parent, parent) &&
		!deadline.Before(c.deadline) && deadline.Sub(c.deadline) <= l.slack && c.ctx.Err() == nil {
		return c.ctx
	}
	ctx, cancel := context.WithDeadline(parent, deadline)
	l.cur.Store(&leaseContext{parent: parent, ctx: ctx, deadline: deadline, cancel: cancel})
	return ctx
}

// sameContext reports whether a and b are the same context value, without
// panicking on a context type that is not comparable.
func sameContext(a, b context.Context) bool {
	ta := reflect.TypeOf(a)
	return ta == reflect.TypeOf(b) && ta.Comparable() && a == b
}

// MemoryDedupOptions configure NewMemoryDedupStore. Zero values mean the
// defaults; NewMemoryDedupStore panics on a negative value.
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
//
// One map holds every key, claimed or done, with its state by value (no
// pointer per key for the garbage collector to follow); completed keys also
// queue in completion order (a ring), so forgetting the oldest is a pop.
type MemoryDedupStore struct {
	opts      MemoryDedupOptions
	base      time.Time // times are kept as durations since base
	realClock bool      // opts.Now is time.Now: durations come from the monotonic clock alone

	mu      sync.Mutex
	keys    map[string]dedupEntry
	claimed int       // entries in state claimed
	done    int       // entries in state done
	order   dedupRing // done keys, oldest completion first; may hold stale items
	claims  uint64    // claims acquired, for claim tokens
}

type dedupState uint8

const (
	stateClaimed dedupState = iota + 1
	stateDone
)

// dedupEntry is the state of a key in the store.
type dedupEntry struct {
	state dedupState
	at    time.Duration // claimed: lease expiry; done: completion time (since base)
	token uint64        // claimed: which acquisition holds it
	seq   uint64        // done: the ring item that represents it
}

// memClaim is a claim Dedup holds on a MemoryDedupStore key.
type memClaim struct {
	token uint64
}

// NewMemoryDedupStore returns an empty store.
func NewMemoryDedupStore(opts MemoryDedupOptions) *MemoryDedupStore {
	switch {
	case opts.TTL < 0:
		invalid("NewMemoryDedupStore: MemoryDedupOptions.TTL = %v: want 0 (default 1h) or more", opts.TTL)
	case opts.MaxKeys < 0:
		invalid("NewMemoryDedupStore: MemoryDedupOptions.MaxKeys = %d: want 0 (default 100000) or more", opts.MaxKeys)
	}
	if opts.TTL <= 0 {
		opts.TTL = time.Hour
	}
	if opts.MaxKeys <= 0 {
		opts.MaxKeys = 100000
	}
	realClock := opts.Now == nil
	if realClock {
		opts.Now = time.Now
	}
	return &MemoryDedupStore{opts: opts, base: opts.Now(), realClock: realClock, keys: map[string]dedupEntry{}}
}

func (s *MemoryDedupStore) now() time.Duration {
	if s.realClock {
		return time.Since(s.base) // reads only the monotonic clock
	}
	return s.opts.Now().Sub(s.base)
}

// live reports whether ring item it still represents its key: the key is
// done and was not completed again since. s.mu must be held.
func (s *MemoryDedupStore) live(it ringItem) bool {
	e, ok := s.keys[it.key]
	return ok && e.state == stateDone && e.seq == it.seq
}

// trim forgets completed keys older than the TTL, and the oldest beyond
// MaxKeys. s.mu must be held.
func (s *MemoryDedupStore) trim(now time.Duration) {
	for {
		it, ok := s.order.front()
		if !ok || s.done <= s.opts.MaxKeys && now-it.at < s.opts.TTL {
			// Nothing is due: the front was completed within the TTL
			// (if it is stale, a later completion of its key is younger
			// still) and the store is within MaxKeys.
			return
		}
		s.order.pop()
		if s.live(it) { // due: too old, or the oldest beyond MaxKeys
			delete(s.keys, it.key)
			s.done--
		}
	}
}

// Claim implements DedupStore.
func (s *MemoryDedupStore) Claim(ctx context.Context, key string, lease time.Duration) (ClaimResult, error) {
	res, _, _, err := s.claim(ctx, key, lease)
	return res, err
}

// claim is Claim, also returning the claim held and when its lease ends.
func (s *MemoryDedupStore) claim(ctx context.Context, key string, lease time.Duration) (ClaimResult, memClaim, time.Time, error) {
	if err := ctx.Err(); err != nil {
		return 0, memClaim{}, time.Time{}, err
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.trim(now)
	e, ok := s.keys[key]
	switch {
	case !ok:
		if s.claimed >= s.opts.MaxKeys {
			s.sweepClaims(now)
		}
		s.claimed++
	case e.state == stateDone:
		return ClaimDone, memClaim{}, time.Time{}, nil
	case now < e.at:
		return ClaimBusy, memClaim{}, time.Time{}, nil
	}
	// A new key, or an expired claim taken over.
	s.claims++
	e = dedupEntry{state: stateClaimed, at: now + lease, token: s.claims}
	s.keys[key] = e
	return ClaimAcquired, memClaim{token: e.token}, s.base.Add(e.at), nil
}

// sweepClaims forgets expired claims (their holders never completed or
// released them). s.mu must be held.
func (s *MemoryDedupStore) sweepClaims(now time.Duration) {
	for k, e := range s.keys {
		if e.state == stateClaimed && now >= e.at {
			s.drop(k)
		}
	}
}

// Complete implements DedupStore.
func (s *MemoryDedupStore) Complete(ctx context.Context, key string) error {
	s.complete(key)
	return nil
}

// complete marks key done, whoever holds its claim.
func (s *MemoryDedupStore) complete(key string) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.keys[key]
	switch {
	case !ok: // new
		s.done++
	case e.state == stateClaimed:
		s.claimed--
		s.done++
	}
	s.keys[key] = dedupEntry{state: stateDone, at: now, seq: s.order.push(key, now)}
	if s.order.len() > 2*s.done+64 {
		s.order.compact(s.live)
	}
	s.trim(now)
}

// Release implements DedupStore.
func (s *MemoryDedupStore) Release(ctx context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.keys[key]; ok && e.state == stateClaimed {
		s.drop(key)
	}
	return nil
}

// release drops held's claim, unless it expired and another delivery took
// the key over meanwhile (that one's claim stays).
func (s *MemoryDedupStore) release(held memClaim, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.keys[key]; ok && e.state == stateClaimed && e.token == held.token {
		s.drop(key)
	}
}

// drop removes a claimed key. s.mu must be held.
func (s *MemoryDedupStore) drop(key string) {
	delete(s.keys, key)
	s.claimed--
}

// Len returns how many completed keys the store remembers now.
func (s *MemoryDedupStore) Len() int {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.trim(now)
	return s.done
}

// dedupRing is a FIFO of done keys. An item is stale when its key was
// completed again (a later item represents it) or forgotten.
type dedupRing struct {
	items   []ringItem // circular; len is a power of two or 0
	head, n int
	seq     uint64
}

type ringItem struct {
	key string
	seq uint64
	at  time.Duration // when the key was completed (since base)
}

func (r *dedupRing) len() int { return r.n }

func (r *dedupRing) push(key string, at time.Duration) uint64 {
	if r.n == len(r.items) {
		r.grow(max(64, 2*len(r.items)))
	}
	r.seq++
	r.items[(r.head+r.n)&(len(r.items)-1)] = ringItem{key: key, seq: r.seq, at: at}
	r.n++
	return r.seq
}

func (r *dedupRing) front() (ringItem, bool) {
	if r.n == 0 {
		return ringItem{}, false
	}
	return r.items[r.head], true
}

func (r *dedupRing) pop() {
	r.items[r.head] = ringItem{}
	r.head = (r.head + 1) & (len(r.items) - 1)
	r.n--
}

// grow copies the items, oldest first, into a ring of size capacity.
func (r *dedupRing) grow(capacity int) {
	items := make([]ringItem, capacity)
	for i := range r.n {
		items[i] = r.items[(r.head+i)&(len(r.items)-1)]
	}
	r.items, r.head = items, 0
}

// compact drops the items that live says are stale.
func (r *dedupRing) compact(live func(ringItem) bool) {
	kept := make([]ringItem, 0, r.n)
	for i := range r.n {
		if it := r.items[(r.head+i)&(len(r.items)-1)]; live(it) {
			kept = append(kept, it)
		}
	}
	size := 64
	for size < len(kept) {
		size *= 2
	}
	r.items = make([]ringItem, size)
	copy(r.items, kept)
	r.head, r.n = 0, len(kept)
}
