package middleware

import (
	"context"
	"testing"
	"time"
)

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

type ctxKey struct{}

// The handler's context ends with the claim's lease (never after it, at
// most slack before it), keeps its own parent's values, and a parent whose
// deadline comes first is kept.
func TestLeaseContexts(t *testing.T) {
	base := context.Background()
	now := time.Now()
	early, cancel := context.WithDeadline(base, now.Add(time.Second))
	defer cancel()
	parentA := context.WithValue(base, ctxKey{}, "a")
	parentB := context.WithValue(base, ctxKey{}, "b")
	type claim struct {
		parent   context.Context
		deadline time.Time
	}
	tests := []struct {
		name   string
		claims []claim
	}{
		{"one claim ends at its lease", []claim{{parentA, now.Add(time.Minute)}}},
		{"claims within slack share the first deadline", []claim{{parentA, now.Add(time.Minute)}, {parentA, now.Add(time.Minute + 500*time.Millisecond)}}},
		{"a claim beyond slack gets its own", []claim{{parentA, now.Add(time.Minute)}, {parentA, now.Add(time.Minute + 2*time.Second)}}},
		{"an earlier claim never gets a later deadline", []claim{{parentA, now.Add(time.Minute)}, {parentA, now.Add(time.Minute - time.Millisecond)}}},
		{"another parent keeps its own values", []claim{{parentA, now.Add(time.Minute)}, {parentB, now.Add(time.Minute)}}},
		{"a parent's earlier deadline is kept", []claim{{early, now.Add(time.Minute)}}},
	}
	const slack = time.Second
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &leaseContexts{slack: slack}
			for i, c := range tt.claims {
				ctx := l.context(c.parent, c.deadline)
				d, ok := ctx.Deadline()
				if !ok {
					t.Fatalf("claim %d: no deadline", i)
				}
				want := c.deadline
				if pd, ok := c.parent.Deadline(); ok && pd.Before(want) {
					want = pd
				}
				if d.After(want) || want.Sub(d) > slack {
					t.Errorf("claim %d: deadline %v, want within %v before %v", i, d, slack, want)
				}
				if got, want := ctx.Value(ctxKey{}), c.parent.Value(ctxKey{}); got != want {
					t.Errorf("claim %d: value %v, want the parent's %v", i, got, want)
				}
			}
		})
	}
}
