package router_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
	"github.com/omnibusmq/omnibus/router/routertest"
)

// failAfter is the failure timeout of every wait in these tests; it never
// paces anything.
const failAfter = 20 * time.Second

func newClient(t testing.TB) *pubsub.Client {
	t.Helper()
	c := memory.NewClient(memory.Options{Buffer: 100000})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func wait(t testing.TB, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(failAfter):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestOrderedByKeyKeepsOrderPerKeyUnderConcurrency32(t *testing.T) {
	cases := []struct {
		name  string
		opts  []router.HandlerOption
		keys  int
		perKy int
	}{
		{"ordered-by-key/conc=32/64-keys", []router.HandlerOption{router.Concurrency(32), router.OrderedByKey()}, 64, 50},
		{"ordered-by-key/conc=32/3-hot-keys", []router.HandlerOption{router.Concurrency(32), router.OrderedByKey(), router.MaxInFlight(16)}, 3, 500},
		// More keys than idle lanes are kept: lanes are dropped and
		// recreated while their keys' later messages arrive.
		{"ordered-by-key/conc=8/3000-keys", []router.HandlerOption{router.Concurrency(8), router.OrderedByKey(), router.MaxInFlight(64)}, 3000, 4},
		{"strict-order", []router.HandlerOption{router.StrictOrder()}, 16, 50},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t)
			total := tc.keys * tc.perKy
			var msgs []*pubsub.Message
			for i := 0; i < tc.perKy; i++ {
				for k := 0; k < tc.keys; k++ {
					msgs = append(msgs, &pubsub.Message{Key: "k" + strconv.Itoa(k), Payload: []byte(strconv.Itoa(i))})
				}
			}
			routertest.Publish(t, c, "orders", msgs...)

			var mu sync.Mutex
			last := map[string]int{}
			var violations []string
			var seen atomic.Int64
			all := make(chan struct{})
			var inHandler, maxIn atomic.Int64
			r := router.New(c, router.Options{})
			r.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
				n := inHandler.Add(1)
				defer inHandler.Add(-1)
				for {
					old := maxIn.Load()
					if n <= old || maxIn.CompareAndSwap(old, n) {
						break
					}
				}
				seq, _ := strconv.Atoi(string(m.Payload))
				mu.Lock()
				if prev, ok := last[m.Key]; ok && seq != prev+1 || !ok && seq != 0 {
					violations = append(violations, fmt.Sprintf("key %s: %d after %d", m.Key, seq, prev))
				}
				last[m.Key] = seq
				mu.Unlock()
				if seen.Add(1) == int64(total) {
					close(all)
				}
				return nil
			}, tc.opts...)
			stop := routertest.Run(t, r)
			wait(t, all, "every message")
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if len(violations) > 0 {
				t.Fatalf("%d order violations, first: %v", len(violations), violations[:min(5, len(violations))])
			}
			if tc.name == "strict-order" && maxIn.Load() != 1 {
				t.Fatalf("strict order ran %d handlers at once", maxIn.Load())
			}
		})
	}
}

// A key whose message keeps failing (and is retried in process) holds only
// its own lane: every other key's messages are processed meanwhile.
func TestOrderedByKeyRetryingKeyDoesNotStallOtherKeys(t *testing.T) {
	cases := []struct {
		name string
		opts []router.HandlerOption
	}{
		{"ordered-by-key/conc=2", []router.HandlerOption{router.Concurrency(2), router.OrderedByKey()}},
		{"ordered-by-key/conc=32", []router.HandlerOption{router.Concurrency(32), router.OrderedByKey()}},
		{"unordered/conc=8", []router.HandlerOption{router.Concurrency(8)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t)
			const others = 200
			var msgs []*pubsub.Message
			for i := 0; i < 5; i++ {
				msgs = append(msgs, &pubsub.Message{Key: "stuck", Payload: []byte(strconv.Itoa(i))})
			}
			for i := 0; i < others; i++ {
				msgs = append(msgs, &pubsub.Message{Key: "k" + strconv.Itoa(i%50), Payload: []byte(strconv.Itoa(i))})
			}
			routertest.Publish(t, c, "orders", msgs...)

			healed := make(chan struct{})
			stuckTried := make(chan struct{})
			var triedOnce sync.Once
			var stuckFailures atomic.Int64
			var otherDone atomic.Int64
			allOthers := make(chan struct{})
			var mu sync.Mutex
			var stuckOrder []string
			stuckDone := make(chan struct{})
			r := router.New(c, router.Options{})
			r.Use(middleware.Retry(middleware.RetryOptions{MaxAttempts: 1 << 30, InitialInterval: time.Microsecond, MaxInterval: time.Microsecond}))
			r.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
				if m.Key == "stuck" {
					select {
					case <-healed:
					default:
						stuckFailures.Add(1)
						triedOnce.Do(func() { close(stuckTried) })
						return errors.New("downstream unavailable")
					}
					mu.Lock()
					stuckOrder = append(stuckOrder, string(m.Payload))
					if len(stuckOrder) == 5 {
						close(stuckDone)
					}
					mu.Unlock()
					return nil
				}
				select { // the other keys run while the stuck one is failing
				case <-stuckTried:
				case <-time.After(failAfter):
					t.Error("the stuck key was never tried")
				}
				if otherDone.Add(1) == others {
					close(allOthers)
				}
				return nil
			}, tc.opts...)
			stop := routertest.Run(t, r)
			wait(t, allOthers, "the other keys while one key is retrying")
			if stuckFailures.Load() == 0 {
				t.Fatal("the stuck key was never tried")
			}
			close(healed)
			wait(t, stuckDone, "the stuck key after it healed")
			if err := stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if tc.name != "unordered/conc=8" {
				want := []string{"0", "1", "2", "3", "4"}
				if fmt.Sprint(stuckOrder) != fmt.Sprint(want) {
					t.Fatalf("stuck key processed in order %v, want %v", stuckOrder, want)
				}
			}
		})
	}
}

// Shutdown with messages in flight loses none: each is acked (its handler
// finished within the timeout) or given back and redelivered to the next
// router of the same group.
func TestShutdownWithInFlightMessagesLosesNone(t *testing.T) {
	type behaviour int
	const (
		finishAfterCancel  behaviour = iota // in-flight handlers finish within the timeout
		honourCtxAtTimeout                  // they run until their ctx is cancelled at the timeout
		ignoreCtx                           // they ignore ctx: nacked at the timeout
	)
	cases := []struct {
		name    string
		batch   bool
		opts    []router.HandlerOption
		b       behaviour
		wantErr bool
	}{
		{"unordered/finish", false, []router.HandlerOption{router.Concurrency(8)}, finishAfterCancel, false},
		{"unordered/ctx-cancelled-at-timeout", false, []router.HandlerOption{router.Concurrency(8)}, honourCtxAtTimeout, true},
		{"unordered/stuck-past-timeout", false, []router.HandlerOption{router.Concurrency(8)}, ignoreCtx, true},
		{"ordered-by-key/finish", false, []router.HandlerOption{router.Concurrency(8), router.OrderedByKey()}, finishAfterCancel, false},
		{"ordered-by-key/stuck-past-timeout", false, []router.HandlerOption{router.Concurrency(8), router.OrderedByKey()}, ignoreCtx, true},
		{"batch/finish", true, []router.HandlerOption{router.Concurrency(2), router.MaxBatch(4)}, finishAfterCancel, false},
		{"batch/stuck-past-timeout", true, []router.HandlerOption{router.Concurrency(2), router.MaxBatch(4)}, ignoreCtx, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := newClient(t)
			const n = 300
			ids := map[string]bool{}
			var msgs []*pubsub.Message
			for i := 0; i < n; i++ {
				m := &pubsub.Message{ID: "m" + strconv.Itoa(i), Key: "k" + strconv.Itoa(i%20)}
				ids[m.ID] = true
				msgs = append(msgs, m)
			}
			routertest.Publish(t, c, "orders", msgs...)

			var mu sync.Mutex
			okFirst := map[string]int{}
			entered := make(chan struct{}, n)
			release := make(chan struct{})
			handle := func(ctx context.Context, m *pubsub.Message) error {
				entered <- struct{}{}
				switch tc.b {
				case finishAfterCancel:
					<-release
				case honourCtxAtTimeout:
					<-ctx.Done()
					return ctx.Err()
				case ignoreCtx:
					<-release
					return nil // too late: already nacked
				}
				mu.Lock()
				okFirst[m.ID]++
				mu.Unlock()
				return nil
			}
			timeout := failAfter
			if tc.b != finishAfterCancel {
				timeout = 50 * time.Millisecond // how long the drain waits; not a synchronisation
			}
			r := router.New(c, router.Options{ShutdownTimeout: timeout, NackDelay: -1})
			if tc.batch {
				r.HandleBatch("orders", "billing", func(ctx context.Context, ms []*pubsub.Message) error {
					for _, m := range ms {
						if err := handle(ctx, m); err != nil {
							return err
						}
					}
					return nil
				}, tc.opts...)
			} else {
				r.Handle("orders", "billing", handle, tc.opts...)
			}
			ctx, cancel := context.WithCancel(context.Background())
			stopped := make(chan error, 1)
			go func() { stopped <- r.Run(ctx) }()
			wait(t, chanOf(entered), "a handler to start")
			cancel()
			if tc.b == finishAfterCancel {
				// The in-flight handlers finish only once shutdown began.
				close(release)
			}
			var runErr error
			select {
			case runErr = <-stopped:
			case <-time.After(failAfter):
				t.Fatal("Run did not return")
			}
			if tc.b == ignoreCtx {
				close(release) // the stuck handlers return after Run did
			}
			if (runErr != nil) != tc.wantErr {
				t.Fatalf("Run error = %v, want error: %v", runErr, tc.wantErr)
			}
			mu.Lock()
			done := map[string]bool{}
			for id, k := range okFirst {
				if k != 1 {
					t.Errorf("message %s processed %d times in the first run", id, k)
				}
				done[id] = true
			}
			mu.Unlock()

			// Every message not processed by the first router must reach a
			// second one; none that was acked may come back.
			missing := len(ids) - len(done)
			var redelivered sync.Map
			var count atomic.Int64
			allBack := make(chan struct{})
			if missing == 0 {
				close(allBack)
			}
			r2 := router.New(c, router.Options{})
			r2.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
				if _, dup := redelivered.LoadOrStore(m.ID, true); !dup && count.Add(1) == int64(missing) {
					close(allBack)
				}
				return nil
			}, router.Concurrency(4))
			stop2 := routertest.Run(t, r2)
			wait(t, allBack, fmt.Sprintf("%d messages not acked in the first run to be redelivered", missing))
			if err := stop2(); err != nil {
				t.Fatalf("second Run: %v", err)
			}
			redelivered.Range(func(k, _ any) bool {
				if done[k.(string)] {
					t.Errorf("message %s was acked in the first run but redelivered", k)
				}
				done[k.(string)] = true
				return true
			})
			if len(done) != n {
				t.Fatalf("%d of %d messages accounted for", len(done), n)
			}
		})
	}
}

func chanOf(c chan struct{}) <-chan struct{} { return c }

// A handler panic never kills the router: the router recovers it (no
// Recover middleware here), nacks the message, and keeps going.
func TestHandlerPanicIsRecoveredByRouterAndNacked(t *testing.T) {
	c := newClient(t)
	routertest.Publish(t, c, "orders", &pubsub.Message{ID: "boom"}, &pubsub.Message{ID: "fine"})
	var attempts atomic.Int64
	done := make(chan struct{})
	var fine atomic.Bool
	r := router.New(c, router.Options{NackDelay: -1})
	r.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
		if m.ID == "fine" {
			fine.Store(true)
			return nil
		}
		if attempts.Add(1) < 3 {
			panic("nil map somewhere")
		}
		if m.Attempt != 3 {
			t.Errorf("third run has Attempt %d, want 3", m.Attempt)
		}
		close(done)
		return nil
	})
	stop := routertest.Run(t, r)
	wait(t, done, "the panicking message to be redelivered")
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !fine.Load() {
		t.Fatal("the other message was not processed")
	}
}

// The unordered mode never runs more than Concurrency handlers at once.
func TestUnorderedRunsAtMostConcurrencyHandlers(t *testing.T) {
	for _, n := range []int{1, 4, 16} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			c := newClient(t)
			var msgs []*pubsub.Message
			for i := 0; i < 20*n; i++ {
				msgs = append(msgs, &pubsub.Message{})
			}
			routertest.Publish(t, c, "t", msgs...)
			var in, maxIn, total atomic.Int64
			full := make(chan struct{})
			var fullOnce sync.Once
			all := make(chan struct{})
			r := router.New(c, router.Options{})
			r.Handle("t", "g", func(ctx context.Context, m *pubsub.Message) error {
				cur := in.Add(1)
				for {
					old := maxIn.Load()
					if cur <= old || maxIn.CompareAndSwap(old, cur) {
						break
					}
				}
				if cur == int64(n) {
					fullOnce.Do(func() { close(full) })
				}
				<-full // the first handlers wait until n run at once
				in.Add(-1)
				if total.Add(1) == int64(20*n) {
					close(all)
				}
				return nil
			}, router.Concurrency(n))
			stop := routertest.Run(t, r)
			wait(t, all, "all messages")
			_ = stop()
			if maxIn.Load() != int64(n) {
				t.Fatalf("at most %d handlers ran at once, want exactly %d", maxIn.Load(), n)
			}
		})
	}
}

func TestHandleBatchGroupsMessagesAndIsolatesAFailingOne(t *testing.T) {
	c := newClient(t)
	var msgs []*pubsub.Message
	for i := 0; i < 10; i++ {
		msgs = append(msgs, &pubsub.Message{ID: "m" + strconv.Itoa(i)})
	}
	routertest.Publish(t, c, "clicks", msgs...)
	poisoned := make(chan *pubsub.Message, 1)
	var mu sync.Mutex
	loaded := map[string]int{}
	var sizes []int
	all := make(chan struct{})
	r := router.New(c, router.Options{})
	r.Use(middleware.Poison(c, "clicks.poison", middleware.PoisonOptions{}))
	r.HandleBatch("clicks", "loader", func(ctx context.Context, ms []*pubsub.Message) error {
		mu.Lock()
		defer mu.Unlock()
		sizes = append(sizes, len(ms))
		for _, m := range ms {
			if m.ID == "m3" {
				return pubsub.Permanent(errors.New("bad row"))
			}
		}
		for _, m := range ms {
			loaded[m.ID]++
		}
		if len(loaded) == 9 {
			close(all)
		}
		return nil
	}, router.MaxBatch(5), router.MaxWait(time.Hour))
	ps, err := c.Subscribe(context.Background(), "clicks.poison", pubsub.Group("check"))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		d, err := ps.Receive(context.Background())
		if err == nil {
			_ = d.Ack()
			poisoned <- d.Message
		}
	}()
	stop := routertest.Run(t, r)
	wait(t, all, "the nine good messages")
	select {
	case m := <-poisoned:
		if m.ID != "m3" || m.Metadata[middleware.MetaPoisonReason] != middleware.ReasonPermanent {
			t.Fatalf("poisoned %s with reason %q, want m3 permanent", m.ID, m.Metadata[middleware.MetaPoisonReason])
		}
	case <-time.After(failAfter):
		t.Fatal("m3 was not poisoned")
	}
	_ = stop()
	_ = ps.Close()
	if sizes[0] != 5 {
		t.Fatalf("first batch had %d messages, want 5 (MaxBatch)", sizes[0])
	}
}

func TestHandlePanicsOnBadRegistrations(t *testing.T) {
	h := func(context.Context, *pubsub.Message) error { return nil }
	cases := []struct {
		name string
		reg  func(r *router.Router)
	}{
		{"empty name", func(r *router.Router) { r.Handle("t", "", h) }},
		{"empty topic", func(r *router.Router) { r.Handle("", "g", h) }},
		{"nil handler", func(r *router.Router) { r.Handle("t", "g", nil) }},
		{"duplicate", func(r *router.Router) { r.Handle("t", "g", h); r.Handle("t", "g", h) }},
		{"two handlers in one group", func(r *router.Router) {
			r.Handle("t", "a", h, router.Group("g"))
			r.Handle("t", "b", h, router.Group("g"))
		}},
		{"empty group", func(r *router.Router) { r.Handle("t", "g", h, router.Group("")) }},
		{"concurrency 0", func(r *router.Router) { r.Handle("t", "g", h, router.Concurrency(0)) }},
		{"strict with concurrency", func(r *router.Router) { r.Handle("t", "g", h, router.StrictOrder(), router.Concurrency(4)) }},
		{"batch ordered by key", func(r *router.Router) {
			r.HandleBatch("t", "g", func(context.Context, []*pubsub.Message) error { return nil }, router.OrderedByKey())
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := router.New(newClient(t), router.Options{})
			defer func() {
				err, _ := recover().(error)
				if !errors.Is(err, pubsub.ErrInvalid) {
					t.Fatalf("Handle panicked with %v, want an error wrapping ErrInvalid", err)
				}
			}()
			tc.reg(r)
		})
	}
}

func TestRunWithoutHandlersIsInvalid(t *testing.T) {
	r := router.New(newClient(t), router.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), failAfter)
	defer cancel()
	if err := r.Run(ctx); !errors.Is(err, pubsub.ErrInvalid) {
		t.Fatalf("Run = %v, want ErrInvalid", err)
	}
}

// A handler renamed in a refactor keeps its group when the group is named
// with Group: it receives what the group had not consumed yet.
func TestGroupKeepsTheConsumerGroupAcrossAHandlerRename(t *testing.T) {
	c := newClient(t)
	ctx := context.Background()
	// The group exists (the old handler ran) and has messages waiting.
	s, err := c.Subscribe(ctx, "orders", pubsub.Group("billing"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	routertest.Publish(t, c, "orders", &pubsub.Message{ID: "waiting"})
	got := make(chan string, 1)
	r := router.New(c, router.Options{})
	r.Handle("orders", "billing-v2", func(ctx context.Context, m *pubsub.Message) error {
		got <- m.ID
		return nil
	}, router.Group("billing"))
	routertest.Start(t, r)
	select {
	case id := <-got:
		if id != "waiting" {
			t.Fatalf("got %q, want the message waiting for the group", id)
		}
	case <-time.After(failAfter):
		t.Fatal("the renamed handler did not receive its group's waiting message")
	}
}

func TestJSONDecodeFailureIsPermanent(t *testing.T) {
	type order struct{ ID int }
	var got order
	h := router.JSON(func(ctx context.Context, m *pubsub.Message, o order) error { got = o; return nil })
	if err := h(context.Background(), &pubsub.Message{Payload: []byte(`{"ID":7}`)}); err != nil || got.ID != 7 {
		t.Fatalf("decode good payload: err %v, got %+v", err, got)
	}
	err := h(context.Background(), &pubsub.Message{ID: "x", Payload: []byte(`{not json`)})
	if !pubsub.IsPermanent(err) {
		t.Fatalf("bad payload error %v is not permanent", err)
	}
}

// Outputs published with router.Publish carry the input's correlation ID.
func TestPublishPropagatesCorrelationID(t *testing.T) {
	c := newClient(t)
	out, err := c.Subscribe(context.Background(), "invoices", pubsub.Group("check"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	routertest.Publish(t, c, "orders",
		&pubsub.Message{ID: "o1", Metadata: map[string]string{pubsub.MetaCorrelationID: "req-42"}},
		&pubsub.Message{ID: "o2"})
	r := router.New(c, router.Options{})
	r.Use(middleware.CorrelationID())
	r.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
		return router.Publish(ctx, "invoices", &pubsub.Message{ID: "inv-" + m.ID})
	})
	routertest.Run(t, r)
	want := map[string]string{"inv-o1": "req-42", "inv-o2": "o2"}
	for range want {
		ctx, cancel := context.WithTimeout(context.Background(), failAfter)
		d, err := out.Receive(ctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		_ = d.Ack()
		if got := d.Message.Metadata[pubsub.MetaCorrelationID]; got != want[d.Message.ID] {
			t.Errorf("%s: correlation ID %q, want %q", d.Message.ID, got, want[d.Message.ID])
		}
	}
	if err := router.Publish(context.Background(), "x", &pubsub.Message{}); !errors.Is(err, router.ErrNoRouter) {
		t.Fatalf("Publish outside a handler = %v, want ErrNoRouter", err)
	}
}

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	os.Exit(m.Run())
}
