package middleware_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/middleware"
)

// dedupModel is MemoryDedupStore's contract written plainly: completed keys
// in completion order (forgotten after the TTL, the oldest first beyond
// MaxKeys), claimed keys with their lease expiry.
type dedupModel struct {
	ttl     time.Duration
	maxKeys int
	done    []string                 // oldest completion first
	doneAt  map[string]time.Duration // completion time of each done key
	claimed map[string]time.Duration // lease expiry of each claimed key
}

func (m *dedupModel) trim(now time.Duration) {
	for len(m.done) > 0 && (len(m.done) > m.maxKeys || now-m.doneAt[m.done[0]] >= m.ttl) {
		delete(m.doneAt, m.done[0])
		m.done = m.done[1:]
	}
}

func (m *dedupModel) claim(now time.Duration, key string, lease time.Duration) middleware.ClaimResult {
	m.trim(now)
	if _, ok := m.doneAt[key]; ok {
		return middleware.ClaimDone
	}
	exp, ok := m.claimed[key]
	switch {
	case ok && now < exp:
		return middleware.ClaimBusy
	case !ok && len(m.claimed) >= m.maxKeys:
		for k, e := range m.claimed { // expired claims are forgotten when claims fill up
			if now >= e {
				delete(m.claimed, k)
			}
		}
	}
	m.claimed[key] = now + lease
	return middleware.ClaimAcquired
}

func (m *dedupModel) complete(now time.Duration, key string) {
	delete(m.claimed, key)
	if _, ok := m.doneAt[key]; ok {
		m.done = slices.DeleteFunc(m.done, func(k string) bool { return k == key })
	}
	m.done = append(m.done, key)
	m.doneAt[key] = now
	m.trim(now)
}

// FuzzMemoryDedupStoreMatchesModel runs a sequence of claims, completions,
// releases and clock steps (from the input bytes) on a MemoryDedupStore and
// on dedupModel, and compares every answer.
func FuzzMemoryDedupStoreMatchesModel(f *testing.F) {
	f.Add([]byte{0x00, 0x10, 0x01, 0x20, 0x03, 0x04})
	f.Add([]byte{0x11, 0x01, 0x21, 0x31, 0x41, 0x01, 0x05, 0x06, 0x00, 0x14})
	f.Add([]byte{0xff, 0x01, 0x09, 0x11, 0x19, 0x21, 0x29, 0x02, 0x0a, 0x12, 0x1a, 0x07, 0x07, 0x00})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) < 1 {
			return
		}
		const unit = time.Second
		maxKeys, ttl := 1+int(ops[0]&3), time.Duration(1+ops[0]>>2&7)*unit
		ops = ops[1:]
		var now time.Duration
		base := time.Unix(1_000_000, 0)
		s := middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{TTL: ttl, MaxKeys: maxKeys, Now: func() time.Time { return base.Add(now) }})
		m := &dedupModel{ttl: ttl, maxKeys: maxKeys, doneAt: map[string]time.Duration{}, claimed: map[string]time.Duration{}}
		ctx := context.Background()
		for i, op := range ops {
			key := string(rune('a' + op>>3&3))
			arg := time.Duration(1+op>>5) * unit
			switch op & 7 {
			case 0, 1:
				got, err := s.Claim(ctx, key, arg)
				if want := m.claim(now, key, arg); err != nil || got != want {
					t.Fatalf("op %d at %v: Claim(%s, %v) = %v, %v; want %v (MaxKeys %d, TTL %v)", i, now, key, arg, got, err, want, maxKeys, ttl)
				}
			case 2, 3:
				_ = s.Complete(ctx, key)
				m.complete(now, key)
			case 4:
				_ = s.Release(ctx, key)
				delete(m.claimed, key)
			case 5, 6:
				now += arg
			case 7:
				m.trim(now)
				if got := s.Len(); got != len(m.done) {
					t.Fatalf("op %d at %v: Len = %d, want %d (%v)", i, now, got, len(m.done), m.done)
				}
			}
		}
	})
}
