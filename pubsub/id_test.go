package pubsub_test

import (
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/omnibusmq/omnibus/pubsub"
)

// NewID returns UUIDv7s (RFC 9562 variant) carrying the current Unix
// millisecond, strictly increasing within the process, also when called
// concurrently and more than 4096 times in one millisecond.
func TestNewIDIsAnIncreasingUUIDv7(t *testing.T) {
	before := time.Now().UnixMilli()
	const goroutines, each = 4, 5000
	ids := make([][]string, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				ids[g] = append(ids[g], pubsub.NewID())
			}
		}()
	}
	wg.Wait()
	after := time.Now().UnixMilli()
	seen := make(map[string]bool, goroutines*each)
	for _, list := range ids {
		for i, id := range list {
			u, err := uuid.Parse(id)
			if err != nil || u.Version() != 7 || u.Variant() != uuid.RFC4122 || len(id) != 36 {
				t.Fatalf("ID %q is not a UUIDv7 string (err %v, version %v, variant %v)", id, err, u.Version(), u.Variant())
			}
			sec, nsec := u.Time().UnixTime()
			if ms := sec*1000 + nsec/1e6; ms < before || ms > after+goroutines*each/4096+1 {
				t.Fatalf("ID %q carries %d ms, want within [%d, %d]", id, ms, before, after)
			}
			if seen[id] {
				t.Fatalf("ID %q repeated", id)
			}
			seen[id] = true
			if i > 0 && id <= list[i-1] {
				t.Fatalf("IDs of one goroutine not increasing: %q after %q", id, list[i-1])
			}
		}
	}
}
