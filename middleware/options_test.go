package middleware_test

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
)

// Every middleware constructor panics at construction on a value it cannot
// use, with an error wrapping ErrInvalid that names the field; zero values
// are the defaults.
func TestConstructorsRejectBadOptionsNamingTheField(t *testing.T) {
	client := memory.NewClient(memory.Options{})
	defer client.Close()
	store := middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{})
	for _, tc := range []struct {
		name  string
		build func()
		want  string // "" for no panic
	}{
		{"retry zero options", func() { middleware.Retry(middleware.RetryOptions{}) }, ""},
		{"retry negative attempts", func() { middleware.Retry(middleware.RetryOptions{MaxAttempts: -1}) }, "RetryOptions.MaxAttempts"},
		{"retry negative initial", func() { middleware.Retry(middleware.RetryOptions{InitialInterval: -time.Second}) }, "RetryOptions.InitialInterval"},
		{"retry negative max interval", func() { middleware.Retry(middleware.RetryOptions{MaxInterval: -time.Second}) }, "RetryOptions.MaxInterval"},
		{"retry multiplier below 1", func() { middleware.Retry(middleware.RetryOptions{Multiplier: 0.5}) }, "RetryOptions.Multiplier"},
		{"retry NaN multiplier", func() { middleware.Retry(middleware.RetryOptions{Multiplier: math.NaN()}) }, "RetryOptions.Multiplier"},
		{"retry negative max elapsed", func() { middleware.Retry(middleware.RetryOptions{MaxElapsed: -1}) }, "RetryOptions.MaxElapsed"},
		{"poison zero options", func() { middleware.Poison(client, "p", middleware.PoisonOptions{}) }, ""},
		{"poison nil publisher", func() { middleware.Poison(nil, "p", middleware.PoisonOptions{}) }, "publisher is nil"},
		{"poison empty topic", func() { middleware.Poison(client, "", middleware.PoisonOptions{}) }, "poison topic is empty"},
		{"poison negative timeout", func() { middleware.Poison(client, "p", middleware.PoisonOptions{PublishTimeout: -1}) }, "PoisonOptions.PublishTimeout"},
		{"dedup zero options", func() { middleware.Dedup(store, middleware.DedupOptions{}) }, ""},
		{"dedup nil store", func() { middleware.Dedup(nil, middleware.DedupOptions{}) }, "store is nil"},
		{"dedup negative lease", func() { middleware.Dedup(store, middleware.DedupOptions{Lease: -1}) }, "DedupOptions.Lease"},
		{"dedup negative busy delay", func() { middleware.Dedup(store, middleware.DedupOptions{BusyDelay: -1}) }, "DedupOptions.BusyDelay"},
		{"dedup negative store timeout", func() { middleware.Dedup(store, middleware.DedupOptions{StoreTimeout: -1}) }, "DedupOptions.StoreTimeout"},
		{"memory store negative TTL", func() { middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{TTL: -1}) }, "MemoryDedupOptions.TTL"},
		{"memory store negative max keys", func() { middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{MaxKeys: -1}) }, "MemoryDedupOptions.MaxKeys"},
		{"throttle zero options", func() { middleware.Throttle(rate.Limit(10), middleware.ThrottleOptions{}) }, ""},
		{"throttle no limit", func() { middleware.Throttle(rate.Inf, middleware.ThrottleOptions{}) }, ""},
		{"throttle zero limit", func() { middleware.Throttle(0, middleware.ThrottleOptions{}) }, "Throttle: limit"},
		{"throttle negative burst", func() { middleware.Throttle(rate.Limit(10), middleware.ThrottleOptions{Burst: -1}) }, "ThrottleOptions.Burst"},
		{"timeout positive", func() { middleware.Timeout(time.Second) }, ""},
		{"timeout zero", func() { middleware.Timeout(0) }, "Timeout(0s)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got error
			func() {
				defer func() {
					if p := recover(); p != nil {
						got, _ = p.(error)
						if got == nil {
							t.Fatalf("panic value %T (%v), want an error", p, p)
						}
					}
				}()
				tc.build()
			}()
			switch {
			case tc.want == "" && got != nil:
				t.Fatalf("panicked: %v", got)
			case tc.want != "" && got == nil:
				t.Fatalf("no panic, want one naming %q", tc.want)
			case tc.want != "" && (!errors.Is(got, pubsub.ErrInvalid) || !strings.Contains(got.Error(), tc.want)):
				t.Fatalf("panic %v, want ErrInvalid naming %q", got, tc.want)
			}
		})
	}
}
