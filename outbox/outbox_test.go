package outbox

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

func TestPublish_RolledBackTransactionPublishesNothing(t *testing.T) {
	for _, backend := range allBackends {
		t.Run(backend, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, backend)
			tx, err := e.begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			rolled := []*pubsub.Message{{Key: "a", Payload: []byte("never")}, {Payload: []byte("never either")}}
			if err := e.store.Publish(ctx, tx.tx, "orders", rolled...); err != nil {
				t.Fatalf("publish: %v", err)
			}
			if err := tx.rollback(ctx); err != nil {
				t.Fatalf("rollback: %v", err)
			}
			if n := e.rows(t); n != 0 {
				t.Fatalf("after rollback the outbox has %d rows, want 0", n)
			}
			// A committed sentinel goes through; it is the only delivery.
			tx, err = e.begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			sentinel := &pubsub.Message{Payload: []byte("committed")}
			if err := e.store.Publish(ctx, tx.tx, "orders", sentinel); err != nil {
				t.Fatal(err)
			}
			if err := tx.commit(ctx); err != nil {
				t.Fatal(err)
			}
			client := newMemClient(t)
			got := collect(t, client, "orders", "g")
			r, err := NewRelay(e.store, client, RelayOptions{PollInterval: 10 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			stop := runRelay(t, r)
			got.waitDistinct(t, 1)
			stop()
			// Rows of an earlier transaction would come first.
			msgs := got.snapshot()
			if len(msgs) != 1 || msgs[0].ID != sentinel.ID {
				t.Fatalf("delivered %d message(s), first %+v; want only the committed sentinel %q", len(msgs), msgs[0], sentinel.ID)
			}
		})
	}
}

func TestPublish_RoundTripKeepsIDKeyPayloadMetadata(t *testing.T) {
	for _, backend := range allBackends {
		t.Run(backend, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, backend)
			big := bytes.Repeat([]byte{0, 1, 2, 0xff}, 64<<10)
			in := []*pubsub.Message{
				{ID: "caller-id-1", Key: "k1", Payload: []byte("hello"), Metadata: map[string]string{"a": "1", "omnibus-x": "y", "ünï": "çödé \"quoted\""}},
				{Key: "k1", Payload: nil},
				{Payload: []byte{}},
				{Key: "k2", Payload: big, Metadata: map[string]string{}},
			}
			tx, err := e.begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.store.Publish(ctx, tx.tx, "t.roundtrip", in...); err != nil {
				t.Fatalf("publish: %v", err)
			}
			if err := tx.commit(ctx); err != nil {
				t.Fatal(err)
			}
			if in[0].ID != "caller-id-1" {
				t.Fatalf("Publish changed the caller's ID to %q", in[0].ID)
			}
			for i, m := range in[1:] {
				if m.ID == "" {
					t.Fatalf("message %d: Publish did not fill the empty ID", i+1)
				}
			}
			client := newMemClient(t)
			got := collect(t, client, "t.roundtrip", "g")
			r, err := NewRelay(e.store, client, RelayOptions{PollInterval: 10 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			runRelay(t, r)
			got.waitDistinct(t, len(in))
			out := got.snapshot()
			for i, want := range in {
				m := out[i]
				if m.ID != want.ID || m.Key != want.Key || !bytes.Equal(m.Payload, want.Payload) {
					t.Errorf("message %d: got id=%q key=%q payload %d bytes; want id=%q key=%q payload %d bytes",
						i, m.ID, m.Key, len(m.Payload), want.ID, want.Key, len(want.Payload))
				}
				if len(m.Metadata) != len(want.Metadata) {
					t.Errorf("message %d: metadata %v, want %v", i, m.Metadata, want.Metadata)
				}
				for k, v := range want.Metadata {
					if m.Metadata[k] != v {
						t.Errorf("message %d: metadata[%q] = %q, want %q", i, k, m.Metadata[k], v)
					}
				}
			}
		})
	}
}

func TestPublish_RejectsBadInputNamingIt(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "sqlite")
	tx, err := e.begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.rollback(ctx)
	var pgxTx pgx.Tx = fakePgxTx{}
	cases := []struct {
		name  string
		tx    any
		topic string
		msgs  []*pubsub.Message
		want  string
	}{
		{"empty topic", tx.tx, "", []*pubsub.Message{{}}, "topic is empty"},
		{"topic with NUL", tx.tx, "a\x00b", []*pubsub.Message{{}}, `topic "a\x00b" contains a NUL byte`},
		{"nil message", tx.tx, "t", []*pubsub.Message{{}, nil}, "message 1 of 2 is nil"},
		{"nil tx", nil, "t", []*pubsub.Message{{}}, "tx is nil"},
		{"not a transaction", 42, "t", []*pubsub.Message{{}}, "tx is a int"},
		{"pgx tx on a sqlite store", pgxTx, "t", []*pubsub.Message{{}}, "dialect is sqlite"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := e.store.Publish(ctx, c.tx, c.topic, c.msgs...)
			if !errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v; want an ErrInvalid naming %q", err, c.want)
			}
		})
	}
	if n := e.rows(t); n != 0 {
		t.Fatalf("bad input wrote %d rows", n)
	}
}

type fakePgxTx struct{ pgx.Tx }

func TestNewStore_RejectsBadTableName(t *testing.T) {
	db := sqliteDB(t)
	for _, name := range []string{
		`a"b`, "a b", "1abc", "a.b.c", ".a", "a.", "a;drop table x", strings.Repeat("x", 51), "s." + strings.Repeat("x", 50) + "y", "ä",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := NewSQLStore(db, SQLite, StoreOptions{Table: name})
			if !errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), "StoreOptions.Table") {
				t.Fatalf("table %q: got %v, want an ErrInvalid naming StoreOptions.Table", name, err)
			}
		})
	}
	for _, name := range []string{"", "outbox", "Orders_Outbox2", "app.outbox", "_x"} {
		if _, err := NewSQLStore(db, SQLite, StoreOptions{Table: name}); err != nil {
			t.Errorf("table %q: %v", name, err)
		}
	}
	if _, err := NewSQLStore(db, Dialect(7), StoreOptions{}); !errors.Is(err, pubsub.ErrInvalid) {
		t.Errorf("dialect 7: got %v, want ErrInvalid", err)
	}
}

func TestNewRelay_RejectsBadOptionsNamingTheField(t *testing.T) {
	s, err := NewSQLStore(sqliteDB(t), SQLite, StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	client := newMemClient(t)
	for _, c := range []struct {
		field string
		o     RelayOptions
	}{
		{"BatchSize", RelayOptions{BatchSize: -1}},
		{"BatchSize", RelayOptions{BatchSize: 10001}},
		{"PollInterval", RelayOptions{PollInterval: -time.Second}},
		{"IdlePollInterval", RelayOptions{IdlePollInterval: -1}},
		{"RetryMin", RelayOptions{RetryMin: -1}},
		{"RetryMax", RelayOptions{RetryMin: time.Second, RetryMax: time.Millisecond}},
	} {
		_, err := NewRelay(s, client, c.o)
		if !errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), "RelayOptions."+c.field) {
			t.Errorf("%+v: got %v; want ErrInvalid naming RelayOptions.%s", c.o, err, c.field)
		}
	}
	if _, err := NewRelay(nil, client, RelayOptions{}); !errors.Is(err, pubsub.ErrInvalid) {
		t.Errorf("nil store: got %v", err)
	}
	if _, err := NewRelay(s, nil, RelayOptions{}); !errors.Is(err, pubsub.ErrInvalid) {
		t.Errorf("nil client: got %v", err)
	}
}

// TestRelay_ConcurrentWritersArriveInPerKeyOrder: rows written by
// concurrent writers over shared keys all arrive, and per key in (txid, id)
// order on Postgres (insertion order on SQLite), while the relay runs
// alongside the writers.
func TestRelay_ConcurrentWritersArriveInPerKeyOrder(t *testing.T) {
	cases := []struct {
		backend                       string
		writers, rows, keys, maxPerTx int
	}{
		{"postgres-pgx", 8, 50000, 100, 20},
		{"postgres-sql", 8, 10000, 100, 20},
		{"sqlite", 8, 10000, 100, 20},
	}
	for _, c := range cases {
		t.Run(c.backend, func(t *testing.T) {
			if testing.Short() && c.rows > 10000 {
				c.rows = 10000
			}
			e := newEnv(t, c.backend)
			client := newMemClient(t)
			got := collect(t, client, "orders", "billing")
			r, err := NewRelay(e.store, client, RelayOptions{PollInterval: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			runRelay(t, r)
			ids := writeRows(t, e, "orders", c.writers, c.rows, c.keys, c.maxPerTx)
			got.waitDistinct(t, len(ids))
			msgs := got.snapshot()
			for _, m := range msgs {
				if !ids[m.ID] {
					t.Fatalf("delivered unknown message %q", m.ID)
				}
			}
			dups := checkOrder(t, msgs)
			t.Logf("%d rows by %d writers over %d keys: all delivered, %d duplicate deliveries", c.rows, c.writers, c.keys, dups)
		})
	}
}

// TestRelay_CommitOrderGapRowWaitsForTheOlderTransaction: T1 writes key k
// (lower id) and stays open; T2 writes k (higher id) and commits. T2's row
// is held back, not relayed ahead of T1's, and once T1 commits both arrive
// in id order.
func TestRelay_CommitOrderGapRowWaitsForTheOlderTransaction(t *testing.T) {
	for _, backend := range []string{"postgres-pgx", "postgres-sql"} {
		t.Run(backend, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, backend)
			t1, err := e.begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = t1.rollback(context.Background()) }) // no-op after commit
			first := &pubsub.Message{Key: "k", Payload: []byte("first: lower id, commits last")}
			if err := e.store.Publish(ctx, t1.tx, "gap", first); err != nil {
				t.Fatal(err)
			}
			t2, err := e.begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			second := &pubsub.Message{Key: "k", Payload: []byte("second: higher id, commits first")}
			if err := e.store.Publish(ctx, t2.tx, "gap", second); err != nil {
				t.Fatal(err)
			}
			if err := t2.commit(ctx); err != nil {
				t.Fatal(err)
			}
			if n := e.rows(t); n != 1 {
				t.Fatalf("%d committed rows visible, want 1 (T2's)", n)
			}

			// One relay pass while T1 is open: nothing may be sent.
			s, err := e.store.be.session(ctx)
			if err != nil {
				t.Fatal(err)
			}
			client := newMemClient(t)
			got := collect(t, client, "gap", "g")
			r, err := NewRelay(e.store, client, RelayOptions{PollInterval: 10 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			n, held, err := r.forwardBatch(ctx, s)
			s.close()
			if err != nil || n != 0 || !held {
				t.Fatalf("relay pass with T1 open: forwarded %d, held back %v, err %v; want 0, true, nil", n, held, err)
			}

			if err := t1.commit(ctx); err != nil {
				t.Fatal(err)
			}
			runRelay(t, r)
			got.waitDistinct(t, 2)
			msgs := got.snapshot()
			if msgs[0].ID != first.ID || msgs[1].ID != second.ID {
				t.Fatalf("delivered %q then %q; want T1's %q then T2's %q", msgs[0].Payload, msgs[1].Payload, first.Payload, second.Payload)
			}
		})
	}
}

// TestRelay_WokenByNotifyNotByPolling: with polls an hour apart and no
// in-process wake-up, a commit reaches the relay through LISTEN/NOTIFY.
func TestRelay_WokenByNotifyNotByPolling(t *testing.T) {
	for _, backend := range []string{"postgres-pgx", "postgres-sql"} {
		t.Run(backend, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, backend)
			client := newMemClient(t)
			got := collect(t, client, "n", "g")
			r, err := NewRelay(e.store, client, RelayOptions{PollInterval: time.Hour, IdlePollInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			listening := make(chan struct{}, 1)
			r.onListen = func() { listening <- struct{}{} }
			unsub := suppressLocalWake(t, e.store)
			defer unsub()
			runRelay(t, r)
			select {
			case <-listening:
			case <-time.After(failAfter):
				t.Fatal("relay never listened")
			}
			tx, err := e.begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := e.store.Publish(ctx, tx.tx, "n", &pubsub.Message{Payload: []byte("wake up")}); err != nil {
				t.Fatal(err)
			}
			if err := tx.commit(ctx); err != nil {
				t.Fatal(err)
			}
			got.waitDistinct(t, 1)
		})
	}
}

// suppressLocalWake makes in-process wake-ups of store's table go nowhere
// for the test, so only NOTIFY can wake a relay.
func suppressLocalWake(t *testing.T, s *Store) func() {
	t.Helper()
	f := func(d Dialect, tbl string) bool { return !(d == s.w.d && tbl == s.Table()) }
	wakeLocalHook.Store(&f)
	return func() { wakeLocalHook.Store(nil) }
}

// TestRelay_SQLiteWokenInProcessByPublish: polls an hour apart, yet a
// Publish in this process gets the row relayed.
func TestRelay_SQLiteWokenInProcessByPublish(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "sqlite")
	client := newMemClient(t)
	got := collect(t, client, "w", "g")
	r, err := NewRelay(e.store, client, RelayOptions{PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	runRelay(t, r)
	for i := 1; i <= 3; i++ {
		tx, err := e.begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.store.Publish(ctx, tx.tx, "w", &pubsub.Message{Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if err := tx.commit(ctx); err != nil {
			t.Fatal(err)
		}
		got.waitDistinct(t, i)
	}
}

// TestRelay_TwoRelaysAtOnceDeliverEverythingInOrder: two relays run on one
// table while writers write; the leader is stopped mid-way and the standby
// takes over; every row arrives, per-key order kept.
func TestRelay_TwoRelaysAtOnceDeliverEverythingInOrder(t *testing.T) {
	e := newEnv(t, "postgres-pgx")
	client := newMemClient(t)
	got := collect(t, client, "orders", "g")
	opts := RelayOptions{PollInterval: 10 * time.Millisecond, BatchSize: 200}
	a, err := NewRelay(e.store, client, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewRelay(e.store, client, opts)
	if err != nil {
		t.Fatal(err)
	}
	stopA, stopB := runRelay(t, a), runRelay(t, b)
	const total = 20000
	written := make(chan map[string]bool, 1)
	go func() { written <- writeRows(t, e, "orders", 4, total, 50, 10) }()
	got.waitDistinct(t, 2000)
	// Stop the relay that led so far (only a leader forwards).
	first, second, stopFirst := a, b, stopA
	if b.Forwarded() > a.Forwarded() {
		first, second, stopFirst = b, a, stopB
	}
	stopFirst()
	if first.Forwarded() == 0 {
		t.Fatalf("the stopped relay forwarded nothing: it was not the leader")
	}
	ids := <-written
	got.waitDistinct(t, total)
	if second.Forwarded() == 0 {
		t.Fatalf("the standby forwarded nothing after the leader stopped")
	}
	msgs := got.snapshot()
	for _, m := range msgs {
		if !ids[m.ID] {
			t.Fatalf("unknown message %q", m.ID)
		}
	}
	dups := checkOrder(t, msgs)
	t.Logf("leader forwarded %d, standby %d, %d duplicate deliveries", first.Forwarded(), second.Forwarded(), dups)
}

// flakyBroker fails SendBatch a number of times, each time after really
// sending the first half of the batch (a partial publish).
type flakyBroker struct {
	driver.Broker
	failures atomic.Int64
	failed   atomic.Int64
}

func (f *flakyBroker) SendBatch(ctx context.Context, topic string, msgs []*driver.Message) error {
	if f.failures.Add(-1) >= 0 {
		f.failed.Add(1)
		if err := f.Broker.SendBatch(ctx, topic, msgs[:len(msgs)/2]); err != nil {
			return err
		}
		return errors.New("injected broker failure after half the batch")
	}
	return f.Broker.SendBatch(ctx, topic, msgs)
}

// TestRelay_PublishFailuresBackOffAndRetryWithoutLossOrReorder: partial
// publish failures keep the rows, re-send them after a backoff, lose none
// and never reorder first deliveries per key.
func TestRelay_PublishFailuresBackOffAndRetryWithoutLossOrReorder(t *testing.T) {
	for _, backend := range []string{"postgres-pgx", "sqlite"} {
		t.Run(backend, func(t *testing.T) {
			e := newEnv(t, backend)
			fb := &flakyBroker{Broker: memory.New(memory.Options{})}
			fb.failures.Store(5)
			client := pubsub.NewClient(fb)
			t.Cleanup(func() { client.Close() })
			got := collect(t, client, "orders", "g")
			ids := writeRows(t, e, "orders", 2, 3000, 10, 10)
			r, err := NewRelay(e.store, client, RelayOptions{BatchSize: 100, PollInterval: 10 * time.Millisecond, RetryMin: time.Millisecond, RetryMax: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			runRelay(t, r)
			got.waitDistinct(t, len(ids))
			if fb.failed.Load() != 5 {
				t.Fatalf("%d injected failures happened, want 5", fb.failed.Load())
			}
			dups := checkOrder(t, got.snapshot())
			if dups == 0 {
				t.Fatalf("no duplicates after 5 partial failures: the failed batches were not re-sent")
			}
		})
	}
}

func TestLag_CountsWaitingRowsAndTheOldestAge(t *testing.T) {
	for _, backend := range allBackends {
		t.Run(backend, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, backend)
			l, err := e.store.Lag(ctx)
			if err != nil || l.Rows != 0 || !l.Oldest.IsZero() || l.Age != 0 {
				t.Fatalf("empty outbox: lag %+v, %v; want zero", l, err)
			}
			before := time.Now().Add(-time.Minute)
			writeRows(t, e, "x", 1, 7, 2, 3)
			l, err = e.store.Lag(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if l.Rows != 7 || l.Oldest.Before(before) || l.Age < 0 {
				t.Fatalf("lag %+v; want 7 rows, an oldest time after %v and a non-negative age", l, before)
			}
		})
	}
}

func TestMigrate_IsIdempotentAndDetectsTheDialect(t *testing.T) {
	ctx := context.Background()
	db := sqliteDB(t)
	for range 2 {
		if err := Migrate(ctx, db); err != nil {
			t.Fatalf("migrate: %v", err)
		}
	}
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM ` + DefaultTable).Scan(&n); err != nil || n != 0 {
		t.Fatalf("default table after Migrate: %d rows, %v", n, err)
	}
	if err := Migrate(ctx, "not a db"); !errors.Is(err, pubsub.ErrInvalid) {
		t.Fatalf("Migrate(string): %v, want ErrInvalid", err)
	}
}
