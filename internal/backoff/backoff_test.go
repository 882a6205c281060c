package backoff_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/internal/backoff"
)

func TestDelayStaysWithinTheCappedExponentialBound(t *testing.T) {
	p := backoff.Policy{Initial: time.Millisecond, Max: 50 * time.Millisecond, Multiplier: 2}
	cases := []struct {
		n    int
		want time.Duration
	}{{1, time.Millisecond}, {2, 2 * time.Millisecond}, {4, 8 * time.Millisecond}, {7, 50 * time.Millisecond}, {1000, 50 * time.Millisecond}}
	for _, tc := range cases {
		if got := p.Cap(tc.n); got != tc.want {
			t.Errorf("Cap(%d) = %v, want %v", tc.n, got, tc.want)
		}
		for i := 0; i < 100; i++ {
			if d := p.Delay(tc.n); d < 0 || d > tc.want {
				t.Fatalf("Delay(%d) = %v, outside [0, %v]", tc.n, d, tc.want)
			}
		}
	}
}

func TestRetryStopsAtSuccessAPermanentErrorOrTheAttemptBound(t *testing.T) {
	transient := errors.New("transient")
	permanent := errors.New("permanent")
	isTransient := func(err error) bool { return errors.Is(err, transient) }
	p := backoff.Policy{Initial: time.Microsecond, Max: time.Microsecond}
	cases := []struct {
		name      string
		results   []error
		attempts  int
		wantCalls int
		wantErr   error
	}{
		{"succeeds after two transient failures", []error{transient, transient, nil}, 5, 3, nil},
		{"stops at a permanent error", []error{transient, permanent, nil}, 5, 2, permanent},
		{"gives up after the attempt bound", []error{transient, transient, transient, transient}, 3, 3, transient},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := p.Retry(context.Background(), tc.attempts, isTransient, func() error {
				calls++
				return tc.results[calls-1]
			})
			if calls != tc.wantCalls || !errors.Is(err, tc.wantErr) && err != tc.wantErr {
				t.Fatalf("calls %d err %v, want %d and %v", calls, err, tc.wantCalls, tc.wantErr)
			}
		})
	}
}
