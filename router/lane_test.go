package router_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
	"github.com/omnibusmq/omnibus/router/routertest"
)

// heldStore is a DedupStore whose key held is claimed by a dead process for
// the first three tries: Claim answers ClaimBusy, as for a lease that has
// not expired yet.
type heldStore struct {
	middleware.DedupStore
	held string
	mu   sync.Mutex
	busy int
}

func (s *heldStore) Claim(ctx context.Context, key string, lease time.Duration) (middleware.ClaimResult, error) {
	if key == s.held {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.busy < 3 {
			s.busy++
			return middleware.ClaimBusy, nil
		}
	}
	return s.DedupStore.Claim(ctx, key, lease)
}

// A message that fails in an ordered lane holds its key: it is handled again
// in place before any later message of its key takes effect, whether it
// failed with an error, was marked for redelivery, or found its Dedup claim
// busy (the claim of a consumer that crashed). Other keys go on meanwhile.
func TestOrderedLaneHoldsAFailedMessageInPlace(t *testing.T) {
	type failure int
	const (
		plainError failure = iota
		redeliver
		dedupBusy
	)
	cases := []struct {
		name string
		fail failure
		opts []router.HandlerOption
	}{
		{"ordered-by-key/error", plainError, []router.HandlerOption{router.Concurrency(4), router.OrderedByKey()}},
		{"ordered-by-key/redeliver", redeliver, []router.HandlerOption{router.Concurrency(4), router.OrderedByKey()}},
		{"ordered-by-key/dedup-busy", dedupBusy, []router.HandlerOption{router.Concurrency(4), router.OrderedByKey()}},
		{"strict-order/error", plainError, []router.HandlerOption{router.StrictOrder()}},
		{"strict-order/dedup-busy", dedupBusy, []router.HandlerOption{router.StrictOrder()}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t)
			const keys, perKey = 4, 20
			var msgs []*pubsub.Message
			for i := 0; i < perKey; i++ {
				for k := 0; k < keys; k++ {
					msgs = append(msgs, &pubsub.Message{ID: fmt.Sprintf("k%d/%d", k, i), Key: "k" + strconv.Itoa(k), Payload: []byte(strconv.Itoa(i))})
				}
			}
			routertest.Publish(t, c, "orders", msgs...)

			var mu sync.Mutex
			effects := map[string][]int{}
			failures := 0
			done := make(chan struct{})
			total := 0
			r := router.New(c, router.Options{NackDelay: time.Millisecond})
			if tc.fail == dedupBusy {
				store := &heldStore{DedupStore: middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{}), held: "k0/0"}
				r.Use(middleware.Dedup(store, middleware.DedupOptions{BusyDelay: time.Millisecond}))
			}
			r.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
				seq, _ := strconv.Atoi(string(m.Payload))
				mu.Lock()
				defer mu.Unlock()
				if m.ID == "k0/0" && tc.fail != dedupBusy && failures < 3 {
					failures++
					if tc.fail == redeliver {
						return router.Redeliver(errors.New("not yet"), time.Millisecond)
					}
					return errors.New("not yet")
				}
				effects[m.Key] = append(effects[m.Key], seq)
				total++
				if total == keys*perKey {
					close(done)
				}
				return nil
			}, tc.opts...)
			stop := routertest.Run(t, r)
			wait(t, done, "every message handled once")
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			for k := 0; k < keys; k++ {
				key := "k" + strconv.Itoa(k)
				got := effects[key]
				if len(got) != perKey {
					t.Fatalf("key %s: %d effects %v, want %d", key, len(got), got, perKey)
				}
				for i, seq := range got {
					if seq != i {
						t.Fatalf("key %s: effects in order %v, want 0..%d once each", key, got, perKey-1)
					}
				}
			}
		})
	}
}
