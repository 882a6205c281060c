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
