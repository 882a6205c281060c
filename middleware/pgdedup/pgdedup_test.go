package pgdedup_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/middleware/pgdedup"
	"github.com/omnibusmq/omnibus/pubsub"
)

var tableSeq atomic.Int64

// setup returns a pool and a Store on a fresh inbox table of its own.
func setup(t *testing.T) (*pgxpool.Pool, *pgdedup.Store) {
	p, s, _ := setupNamed(t)
	return p, s
}

func setupNamed(t *testing.T) (*pgxpool.Pool, *pgdedup.Store, string) {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, integration.Postgres(t))
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	t.Cleanup(pool.Close)
	table := fmt.Sprintf("omnibus_inbox_test_%d_%d", time.Now().UnixNano()%1e9, tableSeq.Add(1))
	s, err := pgdedup.New(ctx, pool, pgdedup.Options{Table: table, TTL: time.Hour})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+s.Table()) })
	return pool, s, table
}

func claim(t *testing.T, s *pgdedup.Store, key string, lease time.Duration) middleware.ClaimResult {
	t.Helper()
	r, err := s.Claim(context.Background(), key, lease)
	if err != nil {
		t.Fatalf("claim %q: %v", key, err)
	}
	return r
}

// age moves a key's expiry into the past, as if its lease or TTL ran out.
func age(t *testing.T, pool *pgxpool.Pool, s *pgdedup.Store, key string) {
	t.Helper()
	tag, err := pool.Exec(context.Background(), `UPDATE `+s.Table()+` SET expires_at = now() - interval '1 second' WHERE key = $1`, key)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("age %q: %v (%d rows)", key, err, tag.RowsAffected())
	}
}

func TestClaimLifecycle(t *testing.T) {
	pool, s := setup(t)
	ctx := context.Background()
	type step struct {
		do   string // claim, complete, release, age
		want middleware.ClaimResult
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"FirstClaimAcquires", []step{{"claim", middleware.ClaimAcquired}}},
		{"HeldClaimIsBusy", []step{{"claim", middleware.ClaimAcquired}, {"claim", middleware.ClaimBusy}}},
		{"CompletedKeyIsDone", []step{{"claim", middleware.ClaimAcquired}, {"complete", 0}, {"claim", middleware.ClaimDone}}},
		{"ReleasedKeyIsAcquiredAgain", []step{{"claim", middleware.ClaimAcquired}, {"release", 0}, {"claim", middleware.ClaimAcquired}}},
		{"ExpiredLeaseIsAcquiredAgain", []step{{"claim", middleware.ClaimAcquired}, {"age", 0}, {"claim", middleware.ClaimAcquired}}},
		{"DoneKeyForgottenAfterTTL", []step{{"claim", middleware.ClaimAcquired}, {"complete", 0}, {"age", 0}, {"claim", middleware.ClaimAcquired}}},
		{"ReleaseNeverDropsADoneKey", []step{{"claim", middleware.ClaimAcquired}, {"complete", 0}, {"release", 0}, {"claim", middleware.ClaimDone}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := "k-" + tc.name
			for i, st := range tc.steps {
				switch st.do {
				case "claim":
					if got := claim(t, s, key, time.Minute); got != st.want {
						t.Fatalf("step %d: Claim = %v, want %v", i, got, st.want)
					}
				case "complete":
					if err := s.Complete(ctx, key); err != nil {
						t.Fatal(err)
					}
				case "release":
					if err := s.Release(ctx, key); err != nil {
						t.Fatal(err)
					}
				case "age":
					age(t, pool, s, key)
				}
			}
		})
	}
}

// A handler that fails its first attempt (claim released) runs again on
// redelivery and then, once completed, never again: the Dedup middleware
// with the Postgres store.
func TestFailedFirstAttemptIsProcessedOnRedelivery(t *testing.T) {
	_, s := setup(t)
	var runs, effects atomic.Int32
	h := middleware.Dedup(s, middleware.DedupOptions{Lease: time.Minute}).Wrap(func(ctx context.Context, m *pubsub.Message) error {
		if runs.Add(1) == 1 {
			return errors.New("first attempt fails")
		}
		effects.Add(1)
		return nil
	})
	m := &pubsub.Message{ID: "msg-failed-first", Topic: "t"}
	ctx := context.Background()
	if err := h(ctx, m); err == nil {
		t.Fatal("first attempt: want the handler's error")
	}
	for i := 0; i < 3; i++ { // redelivery, then two duplicates
		if err := h(ctx, m); err != nil {
			t.Fatalf("delivery %d: %v", i+2, err)
		}
	}
	if runs.Load() != 2 || effects.Load() != 1 {
		t.Errorf("handler ran %d times with %d effects, want 2 runs and 1 effect", runs.Load(), effects.Load())
	}
}

// Concurrent Claims of one key from separate stores (as from separate
// processes): exactly one acquires, the rest are busy; after Complete every
// Claim is done.
func TestConcurrentDuplicatesRunOnce(t *testing.T) {
	pool, _, table := setupNamed(t)
	ctx := context.Background()
	const n = 8
	stores := make([]*pgdedup.Store, n)
	for i := range stores {
		st, err := pgdedup.New(ctx, pool, pgdedup.Options{Table: table, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		stores[i] = st
	}
	results := make([]middleware.ClaimResult, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range stores {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			r, err := stores[i].Claim(ctx, "dup-key", time.Minute)
			if err != nil {
				t.Errorf("claim: %v", err)
			}
			results[i] = r
		}()
	}
	close(start)
	wg.Wait()
	count := map[middleware.ClaimResult]int{}
	winner := -1
	for i, r := range results {
		count[r]++
		if r == middleware.ClaimAcquired {
			winner = i
		}
	}
	if count[middleware.ClaimAcquired] != 1 || count[middleware.ClaimBusy] != n-1 {
		t.Fatalf("results %v: want exactly 1 acquired and %d busy", count, n-1)
	}
	if err := stores[winner].Complete(ctx, "dup-key"); err != nil {
		t.Fatal(err)
	}
	for i, st := range stores {
		if r := claim(t, st, "dup-key", time.Minute); r != middleware.ClaimDone {
			t.Errorf("store %d after Complete: %v, want done", i, r)
		}
	}
}

// Concurrent deliveries of one message through middleware.Dedup: the
// handler runs once; the duplicates that found the key busy return ErrBusy
// (to be nacked with a delay) while it runs.
func TestConcurrentDeliveriesThroughDedupMiddlewareRunHandlerOnce(t *testing.T) {
	_, s := setup(t)
	const n = 5
	var runs atomic.Int32
	busy := make(chan error, n)
	release := make(chan struct{})
	h := middleware.Dedup(s, middleware.DedupOptions{Lease: time.Minute}).Wrap(func(ctx context.Context, m *pubsub.Message) error {
		runs.Add(1)
		<-release // held until every duplicate has returned
		return nil
	})
	m := &pubsub.Message{ID: "msg-concurrent", Topic: "t"}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := h(context.Background(), m)
			if errors.Is(err, middleware.ErrBusy) {
				busy <- err
				return
			}
			errs <- err
		}()
	}
	timeout := time.After(30 * time.Second)
	for i := 0; i < n-1; i++ {
		select {
		case <-busy:
		case err := <-errs:
			t.Fatalf("a delivery returned %v before the running one finished, want ErrBusy", err)
		case <-timeout:
			t.Fatal("duplicates did not return ErrBusy within 30s")
		}
	}
	close(release)
	wg.Wait()
	if err := <-errs; err != nil {
		t.Fatalf("the delivery that ran: %v", err)
	}
	if runs.Load() != 1 {
		t.Errorf("handler ran %d times, want 1", runs.Load())
	}
	if err := h(context.Background(), m); err != nil || runs.Load() != 1 {
		t.Errorf("redelivery after success: err %v, runs %d; want nil and still 1", err, runs.Load())
	}
}

func TestCleanupDeletesOnlyExpiredRows(t *testing.T) {
	pool, s := setup(t)
	ctx := context.Background()
	for _, k := range []string{"done-old", "done-new", "claim-old", "claim-new"} {
		claim(t, s, k, time.Minute)
	}
	for _, k := range []string{"done-old", "done-new"} {
		if err := s.Complete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	age(t, pool, s, "done-old")
	age(t, pool, s, "claim-old")
	n, err := s.Cleanup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("Cleanup deleted %d rows, want 2", n)
	}
	var left []string
	rows, _ := pool.Query(ctx, `SELECT key FROM `+s.Table()+` ORDER BY key`)
	left, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(left, ",") != "claim-new,done-new" {
		t.Errorf("rows left %v, want [claim-new done-new]", left)
	}
}

func TestRunCleanupLoopDeletesExpiredRows(t *testing.T) {
	pool, s := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	claim(t, s, "old", time.Minute)
	age(t, pool, s, "old")
	done := make(chan error, 1)
	go func() { done <- s.RunCleanup(ctx, 10*time.Millisecond) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+s.Table()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("RunCleanup did not delete the expired row within 30s")
		}
		runtime.Gosched() // poll the table until the loop ran
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("RunCleanup returned %v, want context.Canceled", err)
	}
}

// effects is a table the transactional handlers write to; no unique key,
// so any duplicate effect would show as a second row.
func effectsTable(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	name := pgx.Identifier{fmt.Sprintf("omnibus_effects_test_%d_%d", time.Now().UnixNano()%1e9, tableSeq.Add(1))}.Sanitize()
	if _, err := pool.Exec(context.Background(), `CREATE TABLE `+name+` (msg_id text NOT NULL, n int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+name) })
	return name
}

func countEffects(t *testing.T, pool *pgxpool.Pool, table, id string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM `+table+` WHERE msg_id = $1`, id).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// The same message delivered 5 times at once through the transactional
// handler has exactly one effect.
func TestTxHandlerFiveConcurrentDeliveriesOneEffect(t *testing.T) {
	pool, s := setup(t)
	effects := effectsTable(t, pool)
	var runs atomic.Int32
	h, err := s.Handler("billing", func(ctx context.Context, tx pgx.Tx, m *pubsub.Message) error {
		runs.Add(1)
		_, err := tx.Exec(ctx, `INSERT INTO `+effects+` (msg_id, n) VALUES ($1, 1)`, m.ID)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	m := &pubsub.Message{ID: "msg-5x", Topic: "orders"}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if err := h(context.Background(), m); err != nil {
				t.Errorf("delivery: %v", err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if n := countEffects(t, pool, effects, m.ID); n != 1 {
		t.Errorf("%d effects, want exactly 1", n)
	}
	if runs.Load() != 1 {
		t.Errorf("fn ran %d times, want 1 (duplicates wait on the inbox key, then skip)", runs.Load())
	}
}

// A handler that fails after its database write leaves nothing behind
// (effect and inbox row roll back together); the retry then has exactly one
// effect, and later duplicates none.
func TestTxHandlerFailureAfterWriteRollsBackThenRetryOnce(t *testing.T) {
	pool, s := setup(t)
	effects := effectsTable(t, pool)
	var attempt atomic.Int32
	h, err := s.Handler("billing", func(ctx context.Context, tx pgx.Tx, m *pubsub.Message) error {
		n := attempt.Add(1)
		if _, err := tx.Exec(ctx, `INSERT INTO `+effects+` (msg_id, n) VALUES ($1, $2)`, m.ID, n); err != nil {
			return err
		}
		if n == 1 {
			return errors.New("failure after the write")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m := &pubsub.Message{ID: "msg-rollback", Topic: "orders"}
	ctx := context.Background()
	if err := h(ctx, m); err == nil || !strings.Contains(err.Error(), "failure after the write") {
		t.Fatalf("first delivery: %v, want the handler's error", err)
	}
	if n := countEffects(t, pool, effects, m.ID); n != 0 {
		t.Fatalf("after the failed attempt: %d effects, want 0 (rolled back)", n)
	}
	for i := 0; i < 3; i++ {
		if err := h(ctx, m); err != nil {
			t.Fatalf("delivery %d: %v", i+2, err)
		}
	}
	if n := countEffects(t, pool, effects, m.ID); n != 1 {
		t.Errorf("%d effects, want exactly 1", n)
	}
	if attempt.Load() != 2 {
		t.Errorf("fn ran %d times, want 2 (failed, then once)", attempt.Load())
	}
	// Another consumer of the same message (fan-out) processes it too.
	other, err := s.Handler("shipping", func(ctx context.Context, tx pgx.Tx, m *pubsub.Message) error {
		_, err := tx.Exec(ctx, `INSERT INTO `+effects+` (msg_id, n) VALUES ($1, 100)`, m.ID)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := other(ctx, m); err != nil {
		t.Fatal(err)
	}
	if n := countEffects(t, pool, effects, m.ID); n != 2 {
		t.Errorf("after a second consumer: %d effects, want 2", n)
	}
}

func TestNewAndHandlerRejectBadInput(t *testing.T) {
	pool, s := setup(t)
	ctx := context.Background()
	cases := []struct {
		name    string
		err     error
		mention string
	}{
		{"ShortTTL", func() error { _, err := pgdedup.New(ctx, pool, pgdedup.Options{TTL: time.Millisecond}); return err }(), "TTL"},
		{"LongTable", func() error {
			_, err := pgdedup.New(ctx, pool, pgdedup.Options{Table: strings.Repeat("x", 51)})
			return err
		}(), "Table"},
		{"NilPool", func() error { _, err := pgdedup.New(ctx, nil, pgdedup.Options{}); return err }(), "pool"},
		{"EmptyConsumer", func() error {
			_, err := s.Handler("", func(context.Context, pgx.Tx, *pubsub.Message) error { return nil })
			return err
		}(), "consumer"},
		{"NilFunc", func() error { _, err := s.Handler("c", nil); return err }(), "fn"},
		{"EmptyKey", func() error { _, err := s.Claim(ctx, "", time.Second); return err }(), "key"},
		{"ZeroLease", func() error { _, err := s.Claim(ctx, "k", 0); return err }(), "lease"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !errors.Is(tc.err, pubsub.ErrInvalid) {
				t.Fatalf("error %v, want ErrInvalid", tc.err)
			}
			if !strings.Contains(tc.err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", tc.err, tc.mention)
			}
		})
	}
}
