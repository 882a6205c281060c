// Package backoff is the one exponential backoff of omnibus: every retry
// loop (receive, ack, publish, reconnect, relay) waits with it.
package backoff

import (
	"context"
	"math"
	"math/rand/v2"
	"time"

	"github.com/omnibusmq/omnibus/internal/wait"
)

// Policy is exponential backoff with full jitter: the wait before retry n
// (after the n-th failure, 1-based) is uniform in
// [0, min(Max, Initial×Multiplier^(n-1))]. Zero fields take the defaults:
// Initial 10ms, Max 5s, Multiplier 2.
type Policy struct {
	Initial, Max time.Duration
	Multiplier   float64
}

func (p Policy) withDefaults() Policy {
	if p.Initial <= 0 {
		p.Initial = 10 * time.Millisecond
	}
	if p.Max <= 0 {
		p.Max = 5 * time.Second
	}
	if p.Multiplier < 1 {
		p.Multiplier = 2
	}
	return p
}

// Cap returns the upper bound of the wait after the n-th failure.
func (p Policy) Cap(n int) time.Duration {
	p = p.withDefaults()
	c := float64(p.Initial) * math.Pow(p.Multiplier, float64(max(n-1, 0)))
	if c > float64(p.Max) || math.IsInf(c, 0) || math.IsNaN(c) {
		return p.Max
	}
	return time.Duration(c)
}

// Delay returns the wait after the n-th failure: uniform in [0, Cap(n)].
func (p Policy) Delay(n int) time.Duration {
	c := p.Cap(n)
	if c <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(c) + 1))
}

// Sleep waits Delay(n) and reports true, or false as soon as ctx ends.
func (p Policy) Sleep(ctx context.Context, n int) bool { return wait.Sleep(ctx, p.Delay(n)) }

// Retry calls f until it returns nil, an error retryable does not accept,
// or attempts calls were made (attempts <= 0: until ctx ends), waiting
// Delay between calls. It returns f's last error, or ctx's error when ctx
// ended during a wait.
func (p Policy) Retry(ctx context.Context, attempts int, retryable func(error) bool, f func() error) error {
	for n := 1; ; n++ {
		err := f()
		if err == nil || !retryable(err) || (attempts > 0 && n >= attempts) {
			return err
		}
		if !p.Sleep(ctx, n) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
	}
}
