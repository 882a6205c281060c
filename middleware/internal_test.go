package middleware

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"
)

// The table agrees with a Go map through random inserts and removals,
// across growth and the backward shifts of removal.
func TestKeyTableMatchesAMap(t *testing.T) {
	tab := newKeyTable()
	model := map[string]*dedupEntry{}
	r := rand.New(rand.NewPCG(1, 2))
	for op := 0; op < 200000; op++ {
		key := strconv.Itoa(r.IntN(3000))
		h := tab.hash(key)
		got, slot := tab.find(key, h)
		if got != model[key] {
			t.Fatalf("op %d: find(%q) = %p, want %p", op, key, got, model[key])
		}
		if got == nil {
			e := &dedupEntry{key: key, h: h}
			tab.insert(e, slot)
			model[key] = e
		} else if r.IntN(2) == 0 {
			tab.remove(got)
			delete(model, key)
		}
		if tab.n != len(model) {
			t.Fatalf("op %d: n = %d, want %d", op, tab.n, len(model))
		}
	}
	seen := 0
	tab.each(func(e *dedupEntry) {
		seen++
		if model[e.key] != e {
			t.Fatalf("each: stray entry %q", e.key)
		}
	})
	if seen != len(model) {
		t.Fatalf("each saw %d entries, want %d", seen, len(model))
	}
}

// Keys completed again queue again (the stale ring items are skipped and
// compacted away), and the oldest completion is forgotten first.
func TestMemoryDedupStoreRecompleteAndBound(t *testing.T) {
	ctx := context.Background()
	s := NewMemoryDedupStore(MemoryDedupOptions{MaxKeys: 3})
	for i := 0; i < 1000; i++ { // many stale items for "a"
		_ = s.Complete(ctx, "a")
	}
	if s.order.len() > 2*s.done+64 {
		t.Fatalf("ring holds %d items for %d keys: stale items not compacted", s.order.len(), s.done)
	}
	for _, k := range []string{"b", "c", "a", "d"} { // "a" is refreshed, "b" is now oldest
		_ = s.Complete(ctx, k)
	}
	want := map[string]ClaimResult{"a": ClaimDone, "b": ClaimAcquired, "c": ClaimDone, "d": ClaimDone}
	for k, w := range want {
		if got, _ := s.Claim(ctx, k, time.Minute); got != w {
			t.Errorf("Claim(%q) = %v, want %v", k, got, w)
		}
	}
	if s.Len() != 3 {
		t.Errorf("Len = %d, want 3", s.Len())
	}
}

// A delivery whose lease expired and whose key another delivery took over
// does not release the other's claim when it then fails.
func TestMemoryDedupStoreReleaseKeepsATakenOverClaim(t *testing.T) {
	ctx := context.Background()
	s := NewMemoryDedupStore(MemoryDedupOptions{})
	res, first, _, _ := s.claim(ctx, "k", time.Nanosecond)
	if res != ClaimAcquired {
		t.Fatal(res)
	}
	time.Sleep(time.Millisecond)
	if res, _, _, _ = s.claim(ctx, "k", time.Hour); res != ClaimAcquired {
		t.Fatalf("expired claim not taken over: %v", res)
	}
	s.release(first, "k")
	if res, _ := s.Claim(ctx, "k", time.Hour); res != ClaimBusy {
		t.Fatalf("after the first holder's release: %v, want busy (the second still holds it)", res)
	}
}

// The claim's deadline is the lease's end on the monotonic clock.
func TestMemoryDedupStoreClaimDeadline(t *testing.T) {
	s := NewMemoryDedupStore(MemoryDedupOptions{})
	before := time.Now()
	_, _, deadline, _ := s.claim(context.Background(), "k", time.Minute)
	if d := deadline.Sub(before); d < time.Minute || d > time.Minute+time.Second {
		t.Fatalf("deadline %v after the claim, want a minute", d)
	}
}

// The lease context behaves as context.WithDeadline: Done closes and Err
// turns DeadlineExceeded at the deadline whether or not Done was asked
// for first; Cause, AfterFunc and derived contexts see it; the parent's
// cancellation reaches it; end cancels it, also when built afterwards.
func TestLeaseCtx(t *testing.T) {
	type key struct{}
	parent := context.WithValue(context.Background(), key{}, "v")

	t.Run("deadline via Err, never built", func(t *testing.T) {
		l := newLeaseCtx(parent, time.Now().Add(20*time.Millisecond))
		if l.Err() != nil || l.Value(key{}) != "v" {
			t.Fatal("fresh lease context is done or lost its values")
		}
		if d, ok := l.Deadline(); !ok || time.Until(d) > 20*time.Millisecond {
			t.Fatalf("Deadline = %v, %v", d, ok)
		}
		time.Sleep(30 * time.Millisecond)
		if !errors.Is(l.Err(), context.DeadlineExceeded) {
			t.Fatalf("Err after the deadline = %v", l.Err())
		}
		select {
		case <-l.Done():
		default:
			t.Fatal("Done not closed after Err reported the deadline")
		}
		l.end()
		if !errors.Is(l.Err(), context.DeadlineExceeded) {
			t.Fatalf("Err after end = %v, want it to stay DeadlineExceeded", l.Err())
		}
	})
	t.Run("deadline via Done, Cause and AfterFunc", func(t *testing.T) {
		l := newLeaseCtx(parent, time.Now().Add(10*time.Millisecond))
		defer l.end()
		fired := make(chan struct{})
		context.AfterFunc(l, func() { close(fired) })
		child, cancel := context.WithCancel(l)
		defer cancel()
		select {
		case <-child.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("derived context not done at the lease deadline")
		}
		<-fired
		if !errors.Is(context.Cause(l), context.DeadlineExceeded) || !errors.Is(context.Cause(child), context.DeadlineExceeded) {
			t.Fatalf("Cause = %v / %v", context.Cause(l), context.Cause(child))
		}
	})
	t.Run("Cause before anything else", func(t *testing.T) {
		pctx, pcancel := context.WithCancelCause(parent)
		defer pcancel(nil)
		l := newLeaseCtx(pctx, time.Now().Add(time.Hour))
		if c := context.Cause(l); c != nil {
			t.Fatalf("Cause of a live lease context = %v", c)
		}
		l.end()
		if !errors.Is(l.Err(), context.Canceled) || !errors.Is(context.Cause(l), context.Canceled) {
			t.Fatalf("after end: Err %v, Cause %v", l.Err(), context.Cause(l))
		}
	})
	t.Run("parent cancellation", func(t *testing.T) {
		pctx, pcancel := context.WithCancel(parent)
		l := newLeaseCtx(pctx, time.Now().Add(time.Hour))
		defer l.end()
		done := l.Done()
		pcancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("parent cancellation did not reach the lease context")
		}
		if !errors.Is(l.Err(), context.Canceled) {
			t.Fatalf("Err = %v", l.Err())
		}
		l2 := newLeaseCtx(pctx, time.Now().Add(time.Hour))
		if !errors.Is(l2.Err(), context.Canceled) {
			t.Fatalf("Err under a cancelled parent = %v", l2.Err())
		}
	})
	t.Run("end before build", func(t *testing.T) {
		l := newLeaseCtx(parent, time.Now().Add(time.Hour))
		l.end()
		if !errors.Is(l.Err(), context.Canceled) {
			t.Fatalf("Err after end = %v", l.Err())
		}
		select {
		case <-l.Done():
		default:
			t.Fatal("Done built after end is not closed")
		}
	})
	t.Run("parent deadline earlier", func(t *testing.T) {
		pctx, cancel := context.WithTimeout(parent, time.Minute)
		defer cancel()
		l := newLeaseCtx(pctx, time.Now().Add(time.Hour))
		defer l.end()
		if d, _ := l.Deadline(); time.Until(d) > time.Minute {
			t.Fatalf("Deadline %v ignores the parent's", d)
		}
	})
}
