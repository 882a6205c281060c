package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
	"github.com/omnibusmq/omnibus/router/routertest"
)

const failAfter = 20 * time.Second

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newClient(t testing.TB) *pubsub.Client {
	t.Helper()
	c := memory.NewClient(memory.Options{})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func receive(t testing.TB, s *pubsub.Subscription) *pubsub.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), failAfter)
	defer cancel()
	d, err := s.Receive(ctx)
	if err != nil {
		t.Fatalf("receive from %s: %v", s.Topic(), err)
	}
	_ = d.Ack()
	return d.Message
}

func subscribe(t testing.TB, c *pubsub.Client, topic string) *pubsub.Subscription {
	t.Helper()
	s, err := c.Subscribe(context.Background(), topic, pubsub.Group("test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// flakyPublisher fails its first n publishes, then delegates.
type flakyPublisher struct {
	next  router.Publisher
	fails atomic.Int64
	calls atomic.Int64
}

func (p *flakyPublisher) Publish(ctx context.Context, topic string, msgs ...*pubsub.Message) error {
	p.calls.Add(1)
	if p.fails.Add(-1) >= 0 {
		return errors.New("poison broker unavailable")
	}
	return p.next.Publish(ctx, topic, msgs...)
}

// If the poison publish fails, the message is nacked and redelivered, never
// dropped; it lands in the poison topic once the publish works.
func TestPoisonPublishFailureNacksAndNeverDrops(t *testing.T) {
	for _, failures := range []int64{1, 3} {
		t.Run(fmt.Sprintf("%d-failed-publishes", failures), func(t *testing.T) {
			c := newClient(t)
			dlq := subscribe(t, c, "orders.poison")
			pub := &flakyPublisher{next: c}
			pub.fails.Store(failures)
			routertest.Publish(t, c, "orders", &pubsub.Message{ID: "o1", Key: "k", Payload: []byte("bad")})
			var deliveries atomic.Int64
			r := router.New(c, router.Options{NackDelay: -1, Logger: quiet})
			r.Use(middleware.Poison(pub, "orders.poison", middleware.PoisonOptions{}))
			r.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
				if got := deliveries.Add(1); int(got) != m.Attempt {
					t.Errorf("delivery %d has Attempt %d", got, m.Attempt)
				}
				return pubsub.Permanent(errors.New("invalid order"))
			})
			routertest.Run(t, r)
			m := receive(t, dlq)
			if m.ID != "o1" || m.Key != "k" || string(m.Payload) != "bad" {
				t.Fatalf("poisoned message %+v lost its ID, key or payload", m)
			}
			if got := deliveries.Load(); got != failures+1 {
				t.Fatalf("handler ran %d times, want %d (once per failed poison publish, plus one)", got, failures+1)
			}
		})
	}
}

// Poison decides per error: it poisons failures and passes on redelivery
// requests and cancellations.
func TestPoisonDecidesPerError(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	cases := []struct {
		name       string
		ctx        context.Context
		err        error
		wantReason string // "" = not poisoned, error passed on
	}{
		{"success", context.Background(), nil, ""},
		{"permanent", context.Background(), pubsub.Permanent(errors.New("bad")), middleware.ReasonPermanent},
		{"plain without retry", context.Background(), errors.New("down"), middleware.ReasonFailed},
		{"retry exhausted", context.Background(), &middleware.RetryError{Err: errors.New("down"), Reason: middleware.ReasonMaxAttempts, Attempts: 4}, middleware.ReasonMaxAttempts},
		{"panic", context.Background(), router.NewPanicError("boom"), middleware.ReasonPanic},
		{"redeliver request", context.Background(), router.Redeliver(errors.New("busy"), time.Second), ""},
		{"context ended", cancelled, context.Canceled, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got []*pubsub.Message
			pub := publisherFunc(func(ctx context.Context, topic string, msgs ...*pubsub.Message) error {
				got = append(got, msgs...)
				return nil
			})
			h := middleware.Poison(pub, "p", middleware.PoisonOptions{}).Wrap(func(context.Context, *pubsub.Message) error { return tc.err })
			err := h(tc.ctx, &pubsub.Message{ID: "m", Topic: "t", Attempt: 1})
			if tc.wantReason == "" {
				if len(got) != 0 || !errors.Is(err, tc.err) {
					t.Fatalf("poisoned %d, err %v; want passed on %v", len(got), err, tc.err)
				}
				return
			}
			if err != nil || len(got) != 1 {
				t.Fatalf("err %v, poisoned %d; want acked after 1 poison publish", err, len(got))
			}
			if r := got[0].Metadata[middleware.MetaPoisonReason]; r != tc.wantReason {
				t.Fatalf("reason %q, want %q", r, tc.wantReason)
			}
		})
	}
}

type publisherFunc func(ctx context.Context, topic string, msgs ...*pubsub.Message) error

func (f publisherFunc) Publish(ctx context.Context, topic string, msgs ...*pubsub.Message) error {
	return f(ctx, topic, msgs...)
}

func explodingHandler(ctx context.Context, m *pubsub.Message) error {
	var orders map[string]int
	orders[m.ID]++ // assignment to entry in nil map
	return nil
}

// A panic goes through the recommended chain to the poison topic with its
// stack and the full fault record.
func TestPanicIsPoisonedWithStack(t *testing.T) {
	c := newClient(t)
	dlq := subscribe(t, c, "orders.poison")
	routertest.Publish(t, c, "orders", &pubsub.Message{ID: "o1", Key: "cust-1", Payload: []byte(`{"n":1}`), Metadata: map[string]string{"tenant": "acme"}})
	before := time.Now()
	r := router.New(c, router.Options{Logger: quiet})
	r.Use(
		middleware.Poison(c, "orders.poison", middleware.PoisonOptions{}),
		middleware.Retry(middleware.RetryOptions{MaxAttempts: 2, InitialInterval: time.Microsecond}),
		middleware.Dedup(middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{}), middleware.DedupOptions{}),
		middleware.Recover(),
	)
	r.Handle("orders", "billing", explodingHandler)
	routertest.Run(t, r)
	m := receive(t, dlq)
	md := m.Metadata
	if m.ID != "o1" || m.Key != "cust-1" || string(m.Payload) != `{"n":1}` || md["tenant"] != "acme" {
		t.Fatalf("poisoned message lost ID/Key/Payload/Metadata: %+v", m)
	}
	checks := map[string]string{
		middleware.MetaPoisonReason:        middleware.ReasonPanic,
		middleware.MetaPoisonOriginalTopic: "orders",
		middleware.MetaPoisonHandler:       "billing",
		middleware.MetaPoisonAttempts:      "2",
	}
	for k, want := range checks {
		if md[k] != want {
			t.Errorf("%s = %q, want %q", k, md[k], want)
		}
	}
	for _, want := range []string{"assignment to entry in nil map", "goroutine", "explodingHandler", "middleware_test.go"} {
		if !strings.Contains(md[middleware.MetaPoisonError], want) {
			t.Errorf("%s does not contain %q:\n%s", middleware.MetaPoisonError, want, md[middleware.MetaPoisonError])
		}
	}
	first, err1 := time.Parse(time.RFC3339Nano, md[middleware.MetaPoisonFirstFailedAt])
	last, err2 := time.Parse(time.RFC3339Nano, md[middleware.MetaPoisonFailedAt])
	if err1 != nil || err2 != nil || first.Before(before) || last.Before(first) {
		t.Errorf("first-failed-at %q, failed-at %q: want ordered times after the test start", md[middleware.MetaPoisonFirstFailedAt], md[middleware.MetaPoisonFailedAt])
	}
	if _, ok := md[pubsub.MetaAttempt]; ok {
		t.Errorf("poisoned message still carries %s", pubsub.MetaAttempt)
	}
}

// A message whose first attempt failed is processed on redelivery: the key
// is marked done only after success (unlike Watermill, which marks first).
func TestDedupAfterFailureIsProcessed(t *testing.T) {
	cases := []struct {
		name  string
		retry bool
	}{
		{"redelivered by the broker", false},
		{"retried in process", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t)
			store := middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{})
			routertest.Publish(t, c, "orders", &pubsub.Message{ID: "o1"})
			var calls, successes atomic.Int64
			done := make(chan struct{})
			r := router.New(c, router.Options{NackDelay: -1, Logger: quiet})
			if tc.retry {
				r.Use(middleware.Retry(middleware.RetryOptions{InitialInterval: time.Microsecond}))
			}
			r.Use(middleware.Dedup(store, middleware.DedupOptions{}))
			r.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
				if calls.Add(1) == 1 {
					return errors.New("database timeout")
				}
				successes.Add(1)
				close(done)
				return nil
			})
			stop := routertest.Run(t, r)
			select {
			case <-done:
			case <-time.After(failAfter):
				t.Fatal("the failed message was never processed: it was taken for a duplicate")
			}
			_ = stop()
			if successes.Load() != 1 || store.Len() != 1 {
				t.Fatalf("successes %d, store keys %d; want 1 and 1", successes.Load(), store.Len())
			}
		})
	}
}

// spyStore reports Claim results on channels.
type spyStore struct {
	middleware.DedupStore
	busy, done chan struct{}
	busyOnce   sync.Once
	doneOnce   sync.Once
}

func (s *spyStore) Claim(ctx context.Context, key string, lease time.Duration) (middleware.ClaimResult, error) {
	res, err := s.DedupStore.Claim(ctx, key, lease)
	switch res {
	case middleware.ClaimBusy:
		s.busyOnce.Do(func() { close(s.busy) })
	case middleware.ClaimDone:
		s.doneOnce.Do(func() { close(s.done) })
	}
	return res, err
}

// Two concurrent deliveries of one ID never run the handler at the same
// time: the second finds the key busy, is nacked with a delay, and on
// redelivery finds it done and is skipped. The handler runs once.
func TestDedupConcurrentDuplicatesRunOnce(t *testing.T) {
	c := newClient(t)
	spy := &spyStore{
		DedupStore: middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{}),
		busy:       make(chan struct{}), done: make(chan struct{}),
	}
	routertest.Publish(t, c, "orders", &pubsub.Message{ID: "dup", Payload: []byte("a")}, &pubsub.Message{ID: "dup", Payload: []byte("a")})
	var runs, in, maxIn atomic.Int64
	r := router.New(c, router.Options{Logger: quiet})
	r.Use(
		middleware.Poison(c, "orders.poison", middleware.PoisonOptions{}),
		middleware.Retry(middleware.RetryOptions{InitialInterval: time.Microsecond}),
		middleware.Dedup(spy, middleware.DedupOptions{BusyDelay: time.Millisecond}),
	)
	r.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
		runs.Add(1)
		if n := in.Add(1); n > maxIn.Load() {
			maxIn.Store(n)
		}
		defer in.Add(-1)
		select { // hold the claim until the duplicate has tried
		case <-spy.busy:
		case <-time.After(failAfter):
			t.Error("the concurrent duplicate never found the key busy")
		}
		return nil
	}, router.Concurrency(2))
	stop := routertest.Run(t, r)
	select {
	case <-spy.done:
	case <-time.After(failAfter):
		t.Fatal("the duplicate was never redelivered and skipped")
	}
	_ = stop()
	if runs.Load() != 1 || maxIn.Load() != 1 {
		t.Fatalf("handler ran %d times (%d at once), want once", runs.Load(), maxIn.Load())
	}
}

func TestMemoryDedupStoreClaimIsExclusive(t *testing.T) {
	s := middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{})
	var acquired atomic.Int64
	var wg sync.WaitGroup
	startGun := make(chan struct{})
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-startGun
			if res, _ := s.Claim(context.Background(), "k", time.Hour); res == middleware.ClaimAcquired {
				acquired.Add(1)
			}
		}()
	}
	close(startGun)
	wg.Wait()
	if acquired.Load() != 1 {
		t.Fatalf("%d concurrent claims acquired the key, want 1", acquired.Load())
	}
}

func TestMemoryDedupStoreLifecycle(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	type step struct {
		op     string // claim, complete, release, advance, len
		key    string
		d      time.Duration
		want   middleware.ClaimResult
		wantLn int
	}
	cases := []struct {
		name  string
		opts  middleware.MemoryDedupOptions
		steps []step
	}{
		{"claim, busy, complete, done", middleware.MemoryDedupOptions{}, []step{
			{op: "claim", key: "a", d: time.Minute, want: middleware.ClaimAcquired},
			{op: "claim", key: "a", d: time.Minute, want: middleware.ClaimBusy},
			{op: "complete", key: "a"},
			{op: "claim", key: "a", d: time.Minute, want: middleware.ClaimDone},
		}},
		{"release lets a redelivery run", middleware.MemoryDedupOptions{}, []step{
			{op: "claim", key: "a", d: time.Minute, want: middleware.ClaimAcquired},
			{op: "release", key: "a"},
			{op: "claim", key: "a", d: time.Minute, want: middleware.ClaimAcquired},
		}},
		{"an expired lease can be claimed again", middleware.MemoryDedupOptions{}, []step{
			{op: "claim", key: "a", d: time.Minute, want: middleware.ClaimAcquired},
			{op: "advance", d: time.Minute},
			{op: "claim", key: "a", d: time.Minute, want: middleware.ClaimAcquired},
		}},
		{"completed keys expire after the TTL", middleware.MemoryDedupOptions{TTL: time.Hour}, []step{
			{op: "claim", key: "a", d: time.Minute, want: middleware.ClaimAcquired},
			{op: "complete", key: "a"},
			{op: "advance", d: time.Hour - time.Second},
			{op: "claim", key: "a", d: time.Minute, want: middleware.ClaimDone},
			{op: "advance", d: time.Second},
			{op: "len", wantLn: 0},
			{op: "claim", key: "a", d: time.Minute, want: middleware.ClaimAcquired},
		}},
		{"a key completed again expires from its last completion", middleware.MemoryDedupOptions{TTL: time.Hour}, []step{
			{op: "complete", key: "a"},
			{op: "advance", d: 30 * time.Minute},
			{op: "complete", key: "a"},
			{op: "advance", d: 31 * time.Minute},
			{op: "claim", key: "a", d: time.Minute, want: middleware.ClaimDone},
			{op: "len", wantLn: 1},
			{op: "advance", d: 30 * time.Minute},
			{op: "len", wantLn: 0},
			{op: "claim", key: "a", d: time.Minute, want: middleware.ClaimAcquired},
		}},
		{"the bound counts a key completed again once, by its last completion", middleware.MemoryDedupOptions{MaxKeys: 2}, []step{
			{op: "complete", key: "a"}, {op: "complete", key: "b"}, {op: "complete", key: "a"}, {op: "complete", key: "c"},
			{op: "len", wantLn: 2},
			{op: "claim", key: "b", d: time.Minute, want: middleware.ClaimAcquired},
			{op: "claim", key: "a", d: time.Minute, want: middleware.ClaimDone},
			{op: "claim", key: "c", d: time.Minute, want: middleware.ClaimDone},
		}},
		{"size is bounded, oldest forgotten first", middleware.MemoryDedupOptions{MaxKeys: 2}, []step{
			{op: "complete", key: "a"}, {op: "complete", key: "b"}, {op: "complete", key: "c"},
			{op: "len", wantLn: 2},
			{op: "claim", key: "a", d: time.Minute, want: middleware.ClaimAcquired},
			{op: "claim", key: "b", d: time.Minute, want: middleware.ClaimDone},
			{op: "claim", key: "c", d: time.Minute, want: middleware.ClaimDone},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			now = time.Unix(1000, 0)
			tc.opts.Now = clock
			s := middleware.NewMemoryDedupStore(tc.opts)
			for i, st := range tc.steps {
				switch st.op {
				case "claim":
					got, err := s.Claim(ctx, st.key, st.d)
					if err != nil || got != st.want {
						t.Fatalf("step %d: Claim(%s) = %v, %v; want %v", i, st.key, got, err, st.want)
					}
				case "complete":
					_ = s.Complete(ctx, st.key)
				case "release":
					_ = s.Release(ctx, st.key)
				case "advance":
					now = now.Add(st.d)
				case "len":
					if s.Len() != st.wantLn {
						t.Fatalf("step %d: Len = %d, want %d", i, s.Len(), st.wantLn)
					}
				}
			}
		})
	}
}

func TestRetryOptions(t *testing.T) {
	errDown := errors.New("down")
	cases := []struct {
		name       string
		policy     middleware.RetryOptions
		fail       func(call int) error
		wantCalls  int
		wantReason string // "" = success or pass-through
		wantErr    error
	}{
		{"succeeds on the third attempt", middleware.RetryOptions{}, func(n int) error {
			if n < 3 {
				return errDown
			}
			return nil
		}, 3, "", nil},
		{"permanent is never retried", middleware.RetryOptions{}, func(int) error { return pubsub.Permanent(errDown) }, 1, middleware.ReasonPermanent, errDown},
		{"gives up after max attempts", middleware.RetryOptions{MaxAttempts: 4}, func(int) error { return errDown }, 4, middleware.ReasonMaxAttempts, errDown},
		{"classifier says no", middleware.RetryOptions{Retryable: func(err error) bool { return !errors.Is(err, errDown) }}, func(int) error { return errDown }, 1, middleware.ReasonNotRetryable, errDown},
		{"max elapsed", middleware.RetryOptions{InitialInterval: time.Hour, MaxElapsed: time.Millisecond}, func(int) error { return errDown }, 1, middleware.ReasonMaxElapsed, errDown},
		{"redelivery request passes through", middleware.RetryOptions{}, func(int) error { return router.Redeliver(errDown, time.Second) }, 1, "", errDown},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.policy.InitialInterval == 0 {
				tc.policy.InitialInterval = time.Microsecond
			}
			tc.policy.Logger = quiet
			calls := 0
			h := middleware.Retry(tc.policy).Wrap(func(ctx context.Context, m *pubsub.Message) error {
				calls++
				if m.Attempt != calls {
					t.Errorf("call %d sees Attempt %d", calls, m.Attempt)
				}
				if calls > 1 && m.Metadata[pubsub.MetaAttempt] != strconv.Itoa(calls) {
					t.Errorf("call %d sees %s=%q", calls, pubsub.MetaAttempt, m.Metadata[pubsub.MetaAttempt])
				}
				return tc.fail(calls)
			})
			err := h(context.Background(), &pubsub.Message{ID: "m", Attempt: 1})
			if calls != tc.wantCalls {
				t.Fatalf("handler ran %d times, want %d", calls, tc.wantCalls)
			}
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			var re *middleware.RetryError
			if got := errors.As(err, &re); got != (tc.wantReason != "") || got && (re.Reason != tc.wantReason || re.Attempts != tc.wantCalls) {
				t.Fatalf("err = %#v, want RetryError reason %q after %d attempts", err, tc.wantReason, tc.wantCalls)
			}
		})
	}
}

func TestRetryBackoffIsFullJitterUnderACap(t *testing.T) {
	p := middleware.RetryOptions{InitialInterval: 10 * time.Millisecond, MaxInterval: 80 * time.Millisecond, Multiplier: 2}
	for attempt, cap := range map[int]time.Duration{1: 10 * time.Millisecond, 2: 20 * time.Millisecond, 3: 40 * time.Millisecond, 4: 80 * time.Millisecond, 9: 80 * time.Millisecond} {
		distinct := map[time.Duration]bool{}
		lowHalf := 0
		for i := 0; i < 2000; i++ {
			d := p.Backoff(attempt)
			if d < 0 || d > cap {
				t.Fatalf("attempt %d: backoff %v outside [0, %v]", attempt, d, cap)
			}
			if d < cap/2 {
				lowHalf++
			}
			distinct[d] = true
		}
		if len(distinct) < 100 || lowHalf < 600 || lowHalf > 1400 {
			t.Fatalf("attempt %d: %d distinct values, %d of 2000 below half the cap: not uniform jitter", attempt, len(distinct), lowHalf)
		}
	}
}

// In redelivery mode the broker redelivers with the backoff delay and the
// attempt count survives each redelivery: after MaxAttempts deliveries the
// message is poisoned with that count.
func TestRetryRedeliverModeCountsAttemptsAcrossRedeliveries(t *testing.T) {
	c := newClient(t)
	dlq := subscribe(t, c, "orders.poison")
	routertest.Publish(t, c, "orders", &pubsub.Message{ID: "o1"})
	var seen []int
	var mu sync.Mutex
	r := router.New(c, router.Options{Logger: quiet})
	r.Use(
		middleware.Poison(c, "orders.poison", middleware.PoisonOptions{}),
		middleware.Retry(middleware.RetryOptions{MaxAttempts: 3, InitialInterval: time.Millisecond, Redeliver: true}),
	)
	r.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
		mu.Lock()
		seen = append(seen, m.Attempt)
		mu.Unlock()
		return errors.New("down")
	})
	routertest.Run(t, r)
	m := receive(t, dlq)
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(seen) != "[1 2 3]" {
		t.Fatalf("deliveries saw attempts %v, want [1 2 3]", seen)
	}
	if m.Metadata[middleware.MetaPoisonAttempts] != "3" || m.Metadata[middleware.MetaPoisonReason] != middleware.ReasonMaxAttempts {
		t.Fatalf("poison record attempts=%q reason=%q", m.Metadata[middleware.MetaPoisonAttempts], m.Metadata[middleware.MetaPoisonReason])
	}
}

// A retry waiting for its backoff does not hold up shutdown: Retry gives the
// message back to the broker (router.Redeliver with the rest of the wait)
// and Run returns although the backoff and the shutdown timeout are an hour.
func TestRetryBackoffDoesNotHoldUpShutdown(t *testing.T) {
	c := newClient(t)
	routertest.Publish(t, c, "orders", &pubsub.Message{ID: "o1"})
	failed := make(chan struct{})
	var once sync.Once
	retryErr := make(chan error, 1)
	capture := router.Middleware(func(next router.Handler) router.Handler {
		return func(ctx context.Context, m *pubsub.Message) error {
			err := next(ctx, m)
			retryErr <- err
			return err
		}
	})
	r := router.New(c, router.Options{ShutdownTimeout: time.Hour, Logger: quiet})
	r.Use(capture, middleware.Retry(middleware.RetryOptions{InitialInterval: time.Hour, MaxInterval: time.Hour}))
	r.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
		once.Do(func() { close(failed) })
		return errors.New("down")
	})
	stop := routertest.Run(t, r)
	select {
	case <-failed:
	case <-time.After(failAfter):
		t.Fatal("handler never ran")
	}
	if err := stop(); err != nil { // stop fails the test if Run takes failAfter
		t.Fatalf("Run: %v", err)
	}
	err := <-retryErr
	if d, ok := router.RedeliverDelay(err); !ok || d > time.Hour {
		t.Fatalf("Retry returned %v at shutdown, want a redelivery request with the rest of the backoff", err)
	}
}

func TestRecoverReturnsPanicErrorWithStack(t *testing.T) {
	h := middleware.Recover().Wrap(explodingHandler)
	err := h(context.Background(), &pubsub.Message{ID: "x"})
	var pe *middleware.PanicError
	if !errors.As(err, &pe) || !strings.Contains(string(pe.Stack), "explodingHandler") {
		t.Fatalf("err = %v, want a PanicError whose stack names explodingHandler", err)
	}
	if pubsub.IsPermanent(err) {
		t.Fatal("a recovered panic should be retryable by default")
	}
}

func TestTimeoutBoundsOnlyTheInnerHandler(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	var inner context.Context
	h := middleware.Timeout(time.Nanosecond).Wrap(func(ctx context.Context, m *pubsub.Message) error {
		inner = ctx
		<-ctx.Done()
		return ctx.Err()
	})
	err := h(parent, &pubsub.Message{})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("err = %v, want a wrapped deadline error", err)
	}
	if inner.Err() == nil || parent.Err() != nil {
		t.Fatalf("inner ctx err %v, parent err %v: want only the inner one ended", inner.Err(), parent.Err())
	}
}

func TestThrottleWaitsForATokenPerMessage(t *testing.T) {
	ran := 0
	// One token and the next in an hour: the second message cannot get a
	// token before its context ends in a minute (Wait says so at once).
	h := middleware.Throttle(rate.Every(time.Hour), middleware.ThrottleOptions{Burst: 1})(func(context.Context, *pubsub.Message) error { ran++; return nil })
	if err := h(context.Background(), &pubsub.Message{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := h(ctx, &pubsub.Message{}); err == nil {
		t.Fatal("second message ran without a token")
	}
	if ran != 1 {
		t.Fatalf("handler ran %d times, want 1", ran)
	}
}
