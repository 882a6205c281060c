package middleware

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/omnibusmq/omnibus/internal/backoff"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

// Reasons recorded by Retry (RetryError.Reason) and Poison
// (omnibus-poison-reason).
const (
	// ReasonPermanent: the error was pubsub.Permanent.
	ReasonPermanent = "permanent"
	// ReasonPanic: the handler panicked (Recover or the router recovered it).
	ReasonPanic = "panic"
	// ReasonMaxAttempts: Retry ran out of attempts.
	ReasonMaxAttempts = "max-attempts"
	// ReasonMaxElapsed: Retry ran out of time (RetryOptions.MaxElapsed).
	ReasonMaxElapsed = "max-elapsed"
	// ReasonNotRetryable: the RetryOptions.Retryable classifier said no.
	ReasonNotRetryable = "not-retryable"
	// ReasonFailed: the handler failed and no Retry was in the chain.
	ReasonFailed = "failed"
)

// RetryOptions configure Retry. Zero values mean the defaults; Retry panics
// on a negative value, naming the field.
type RetryOptions struct {
	// MaxAttempts is the most times the handler runs for one message,
	// counting the first (default 5; 1 disables retries). Deliveries count:
	// a message redelivered by the broker starts at its Message.Attempt.
	MaxAttempts int
	// InitialInterval is the backoff cap before the second attempt
	// (default 100ms); each later cap is Multiplier times the previous, up
	// to MaxInterval (default 30s). The wait is uniformly random between 0
	// and the cap (full jitter).
	InitialInterval time.Duration
	MaxInterval     time.Duration
	// Multiplier grows the backoff cap (default 2).
	Multiplier float64
	// MaxElapsed stops retrying when the next attempt would start later
	// than MaxElapsed after the first failure (0: no limit). In redelivery
	// mode the first failure this process saw is used.
	MaxElapsed time.Duration
	// Retryable classifies errors: false gives up at once. Default: every
	// error is retryable. Errors marked pubsub.Permanent are never retried,
	// whatever it says.
	Retryable func(error) bool
	// Redeliver, when the router's broker schedules delayed redelivery
	// itself and counts attempts (Capabilities.NackDelay and AttemptCount),
	// gives a failed message back to the broker with the backoff delay
	// instead of waiting in process: the worker is free meanwhile, but
	// per-key order is not kept across the retry. On other brokers Retry
	// falls back to waiting in process (and logs that once).
	Redeliver bool
	// Logger, default the router's.
	Logger *slog.Logger
}

// RetryError is what Retry returns when it gives up: the last error, how
// many attempts were made and when the first one failed. Poison reads it
// for the fault record. errors.Is/As see Err.
type RetryError struct {
	Err           error
	Reason        string // ReasonPermanent, ReasonMaxAttempts, ReasonMaxElapsed, ReasonNotRetryable, ReasonPanic
	Attempts      int
	FirstFailedAt time.Time
}

// Error says why Retry gave up.
func (e *RetryError) Error() string {
	return fmt.Sprintf("retry: gave up after %d attempt(s) (%s): %v", e.Attempts, e.Reason, e.Err)
}

// Unwrap returns the handler's last error.
func (e *RetryError) Unwrap() error { return e.Err }

// validate panics on a value that no default can stand for.
func (p RetryOptions) validate() {
	switch {
	case p.MaxAttempts < 0:
		invalid("Retry: RetryOptions.MaxAttempts = %d: want 0 (default 5) or more", p.MaxAttempts)
	case p.InitialInterval < 0:
		invalid("Retry: RetryOptions.InitialInterval = %v: want 0 (default 100ms) or more", p.InitialInterval)
	case p.MaxInterval < 0:
		invalid("Retry: RetryOptions.MaxInterval = %v: want 0 (default 30s) or more", p.MaxInterval)
	case p.Multiplier != 0 && !(p.Multiplier >= 1):
		invalid("Retry: RetryOptions.Multiplier = %v: want 0 (default 2) or at least 1", p.Multiplier)
	case p.MaxElapsed < 0:
		invalid("Retry: RetryOptions.MaxElapsed = %v: want 0 (no limit) or more", p.MaxElapsed)
	}
}

func (p RetryOptions) withDefaults() RetryOptions {
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = 5
	}
	if p.InitialInterval <= 0 {
		p.InitialInterval = 100 * time.Millisecond
	}
	if p.MaxInterval <= 0 {
		p.MaxInterval = 30 * time.Second
	}
	if p.MaxInterval < p.InitialInterval {
		p.MaxInterval = p.InitialInterval
	}
	if p.Multiplier < 1 {
		p.Multiplier = 2
	}
	return p
}

// Backoff returns the wait after the given failed attempt (1-based): uniform
// in [0, min(MaxInterval, InitialInterval×Multiplier^(attempt-1))].
func (p RetryOptions) Backoff(attempt int) time.Duration {
	p = p.withDefaults()
	return backoff.Policy{Initial: p.InitialInterval, Max: p.MaxInterval, Multiplier: p.Multiplier}.Delay(attempt)
}

// giveUp returns the reason to stop after a failed attempt, or "".
func (p RetryOptions) giveUp(err error, attempt int) string {
	var pe *router.PanicError
	switch {
	case pubsub.IsPermanent(err):
		return ReasonPermanent
	case p.Retryable != nil && !p.Retryable(err):
		if errors.As(err, &pe) {
			return ReasonPanic
		}
		return ReasonNotRetryable
	case attempt >= p.MaxAttempts:
		return ReasonMaxAttempts
	}
	return ""
}

// passThrough reports errors Retry must not retry or wrap: requests for
// redelivery (router.Redeliver) and failures caused by the router shutting
// down or the delivery being cancelled.
func passThrough(ctx context.Context, err error) bool {
	if _, ok := router.RedeliverDelay(err); ok {
		return true
	}
	return ctx.Err() != nil
}

// Retry retries a failing handler per p. Errors marked pubsub.Permanent (and
// those the classifier rejects) are not retried. When it gives up it returns
// a *RetryError (for Poison); while retrying in process it waits with the
// message's worker held, so per-key order is kept. If the router starts
// shutting down during a wait, Retry gives the message back to the broker
// with the remaining wait (router.Redeliver) instead of holding up the
// shutdown.
//
// The handler sees, on a retry, a copy of the message whose Attempt and
// omnibus-attempt header carry the attempt number. With p.Redeliver (see
// there) the attempt number is the broker's Message.Attempt.
//
// Its rank is router.RankRetry: inside Poison, outside Dedup, Timeout and
// Recover (Use panics otherwise).
func Retry(p RetryOptions) router.Ranked {
	p.validate()
	p = p.withDefaults()
	rd := &redeliverState{first: map[string]time.Time{}}
	return router.Ranked{Name: "middleware.Retry", Rank: router.RankRetry, Middleware: func(next router.Handler) router.Handler {
		return func(ctx context.Context, m *pubsub.Message) error {
			err := next(ctx, m)
			if err == nil {
				if p.Redeliver && m.Attempt > 1 {
					rd.forget(m.ID)
				}
				return nil
			}
			if passThrough(ctx, err) {
				return err
			}
			if p.Redeliver {
				if info := router.Info(ctx); info != nil && info.Client != nil {
					caps := info.Client.Capabilities()
					if caps.NackDelay && caps.AttemptCount {
						return p.redeliver(rd, m, err)
					}
					rd.warnOnce.Do(func() {
						p.log(ctx).Warn("middleware: retry: the broker cannot redeliver with a delay and count attempts; retrying in process",
							"handler", info.Name, "topic", info.Topic)
					})
				}
			}
			return p.inProcess(ctx, next, m, err)
		}
	}}
}

func (p RetryOptions) inProcess(ctx context.Context, next router.Handler, m *pubsub.Message, err error) error {
	first := time.Now()
	attempt := max(m.Attempt, 1)
	for {
		if reason := p.giveUp(err, attempt); reason != "" {
			return &RetryError{Err: err, Reason: reason, Attempts: attempt, FirstFailedAt: first}
		}
		wait := p.Backoff(attempt)
		if p.MaxElapsed > 0 && time.Since(first)+wait > p.MaxElapsed {
			return &RetryError{Err: err, Reason: ReasonMaxElapsed, Attempts: attempt, FirstFailedAt: first}
		}
		if wait > 0 {
			start := time.Now()
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("middleware: retry of message %q interrupted after attempt %d: %w (last error: %v)", m.ID, attempt, ctx.Err(), err)
			case <-router.Draining(ctx):
				t.Stop()
				return router.Redeliver(fmt.Errorf("middleware: retry of message %q stopped by shutdown after attempt %d: %w", m.ID, attempt, err), wait-time.Since(start))
			}
		}
		attempt++
		mm := m.Copy()
		mm.Attempt = attempt
		if mm.Metadata == nil {
			mm.Metadata = make(map[string]string, 1)
		}
		mm.Metadata[pubsub.MetaAttempt] = strconv.Itoa(attempt)
		p.log(ctx).Debug("middleware: retrying", "id", m.ID, "attempt", attempt, "error", err)
		err = next(ctx, mm)
		if err == nil || passThrough(ctx, err) {
			return err
		}
	}
}

// redeliverState remembers, per message ID, when this process first saw it
// fail (for MaxElapsed and the poison record in redelivery mode). Bounded.
type redeliverState struct {
	warnOnce sync.Once
	mu       sync.Mutex
	first    map[string]time.Time
}

const maxRemembered = 10000

func (s *redeliverState) firstFailure(id string, now time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.first[id]; ok {
		return t
	}
	if len(s.first) >= maxRemembered {
		for k := range s.first { // drop an arbitrary entry
			delete(s.first, k)
			break
		}
	}
	s.first[id] = now
	return now
}

func (s *redeliverState) forget(id string) {
	s.mu.Lock()
	delete(s.first, id)
	s.mu.Unlock()
}

func (p RetryOptions) redeliver(s *redeliverState, m *pubsub.Message, err error) error {
	attempt := max(m.Attempt, 1)
	first := s.firstFailure(m.ID, time.Now())
	if reason := p.giveUp(err, attempt); reason != "" {
		s.forget(m.ID)
		return &RetryError{Err: err, Reason: reason, Attempts: attempt, FirstFailedAt: first}
	}
	wait := p.Backoff(attempt)
	if p.MaxElapsed > 0 && time.Since(first)+wait > p.MaxElapsed {
		s.forget(m.ID)
		return &RetryError{Err: err, Reason: ReasonMaxElapsed, Attempts: attempt, FirstFailedAt: first}
	}
	return router.Redeliver(fmt.Errorf("middleware: retry: attempt %d of %d for message %q failed: %w", attempt, p.MaxAttempts, m.ID, err), wait)
}

func (p RetryOptions) log(ctx context.Context) *slog.Logger {
	if p.Logger != nil {
		return p.Logger
	}
	return logger(ctx)
}
