package outbox

import (
	"context"
	crand "crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// failAfter bounds every wait in these tests: a failure timeout, never a
// synchronisation.
const failAfter = 2 * time.Minute

func uniqueTable(prefix string) string {
	b := make([]byte, 6)
	_, _ = crand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

func pgPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	url := integration.Postgres(t)
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatalf("parse %s: %v", integration.EnvPostgres, err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("connect to postgres: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func pgSQL(t testing.TB) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", integration.Postgres(t))
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	db.SetMaxOpenConns(16)
	t.Cleanup(func() { db.Close() })
	return db
}

func sqliteDB(t testing.TB) *sql.DB {
	t.Helper()
	dsn := "file:" + filepath.Join(t.TempDir(), "outbox.db") + "?_pragma=busy_timeout(20000)&_pragma=journal_mode(WAL)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// txn is one open transaction of any backend.
type txn struct {
	tx       any
	xid      func(ctx context.Context) (uint64, error) // 0 on SQLite
	commit   func(ctx context.Context) error
	rollback func(ctx context.Context) error
	exec     func(ctx context.Context, q string) error
}

// env is an outbox on one backend, with a fresh table dropped after the test.
type env struct {
	name  string
	store *Store
	pg    bool
	begin func(ctx context.Context) (*txn, error)
	// rows counts the table's rows straight from the database.
	rows func(t testing.TB) int
	// quarantined returns "msg_id: reason" of every quarantined row, by id.
	quarantined func(t testing.TB) []string
}

const quarantineQuery = `SELECT msg_id || ': ' || reason FROM %s ORDER BY id`

func scanStrings(t testing.TB, rs interface {
	Next() bool
	Scan(...any) error
	Err() error
}, err error) []string {
	t.Helper()
	if err != nil {
		t.Fatalf("query: %v", err)
	}
	var out []string
	for rs.Next() {
		var s string
		if err := rs.Scan(&s); err != nil {
			t.Fatalf("scan: %v", err)
		}
		out = append(out, s)
	}
	if err := rs.Err(); err != nil {
		t.Fatalf("rows: %v", err)
	}
	return out
}

func newEnv(t testing.TB, backend string) *env {
	t.Helper()
	ctx := context.Background()
	tbl := uniqueTable("obx")
	e := &env{name: backend}
	switch backend {
	case "postgres-pgx":
		pool := pgPool(t)
		s, err := NewPgxStore(pool, StoreOptions{Table: tbl})
		if err != nil {
			t.Fatal(err)
		}
		e.store, e.pg = s, true
		e.begin = func(ctx context.Context) (*txn, error) {
			tx, err := pool.Begin(ctx)
			if err != nil {
				return nil, fmt.Errorf("begin: %w", err)
			}
			return &txn{
				tx: tx,
				xid: func(ctx context.Context) (uint64, error) {
					var s string
					err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&s)
					if err != nil {
						return 0, err
					}
					return strconv.ParseUint(s, 10, 64)
				},
				commit:   tx.Commit,
				rollback: tx.Rollback,
				exec:     func(ctx context.Context, q string) error { _, err := tx.Exec(ctx, q); return err },
			}, nil
		}
		e.rows = func(t testing.TB) int {
			var n int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+s.w.t.quoted()).Scan(&n); err != nil {
				t.Fatalf("count rows: %v", err)
			}
			return n
		}
		e.quarantined = func(t testing.TB) []string {
			rs, err := pool.Query(ctx, fmt.Sprintf(quarantineQuery, s.w.t.quarantined()))
			if err == nil {
				defer rs.Close()
			}
			return scanStrings(t, rs, err)
		}
		t.Cleanup(func() {
			_, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+s.w.t.quoted()+`, `+s.w.t.quarantined())
		})
	case "postgres-sql", "sqlite":
		var db *sql.DB
		d := Postgres
		if backend == "sqlite" {
			db, d = sqliteDB(t), SQLite
		} else {
			db = pgSQL(t)
			e.pg = true
		}
		s, err := NewSQLStore(db, d, StoreOptions{Table: tbl})
		if err != nil {
			t.Fatal(err)
		}
		e.store = s
		e.begin = func(ctx context.Context) (*txn, error) {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return nil, fmt.Errorf("begin: %w", err)
			}
			return &txn{
				tx: tx,
				xid: func(ctx context.Context) (uint64, error) {
					if d == SQLite {
						return 0, nil
					}
					var s string
					if err := tx.QueryRowContext(ctx, `SELECT pg_current_xact_id()::text`).Scan(&s); err != nil {
						return 0, err
					}
					return strconv.ParseUint(s, 10, 64)
				},
				commit:   func(context.Context) error { return tx.Commit() },
				rollback: func(context.Context) error { return tx.Rollback() },
				exec:     func(ctx context.Context, q string) error { _, err := tx.ExecContext(ctx, q); return err },
			}, nil
		}
		e.rows = func(t testing.TB) int {
			var n int
			if err := db.QueryRowContext(ctx, `SELECT count(*) FROM `+s.w.t.quoted()).Scan(&n); err != nil {
				t.Fatalf("count rows: %v", err)
			}
			return n
		}
		e.quarantined = func(t testing.TB) []string {
			rs, err := db.QueryContext(ctx, fmt.Sprintf(quarantineQuery, s.w.t.quarantined()))
			if err == nil {
				defer rs.Close()
			}
			return scanStrings(t, rs, err)
		}
		if d == Postgres {
			t.Cleanup(func() { _, _ = db.Exec(`DROP TABLE IF EXISTS ` + s.w.t.quoted() + `, ` + s.w.t.quarantined()) })
		}
	default:
		t.Fatalf("unknown backend %q", backend)
	}
	if err := e.store.Migrate(ctx); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return e
}

var allBackends = []string{"postgres-pgx", "postgres-sql", "sqlite"}

// collector receives from a group subscription, acking everything, and
// records deliveries in arrival order.
type collector struct {
	mu      sync.Mutex
	got     []*pubsub.Message
	ids     map[string]int
	changed chan struct{}
	errs    []error
}

func collect(t testing.TB, client *pubsub.Client, topic, group string) *collector {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sub, err := client.Subscribe(ctx, topic, pubsub.Group(group))
	if err != nil {
		t.Fatalf("subscribe %s: %v", topic, err)
	}
	c := &collector{ids: map[string]int{}, changed: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			d, err := sub.Receive(ctx)
			if err != nil {
				return
			}
			c.mu.Lock()
			c.got = append(c.got, d.Message)
			c.ids[d.Message.ID]++
			close(c.changed)
			c.changed = make(chan struct{})
			if err := d.Ack(); err != nil {
				c.errs = append(c.errs, err)
			}
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = sub.Close()
	})
	return c
}

// waitDistinct waits until n distinct message IDs arrived.
func (c *collector) waitDistinct(t testing.TB, n int) {
	t.Helper()
	timeout := time.NewTimer(failAfter)
	defer timeout.Stop()
	for {
		c.mu.Lock()
		have, ch := len(c.ids), c.changed
		c.mu.Unlock()
		if have >= n {
			return
		}
		select {
		case <-ch:
		case <-timeout.C:
			t.Fatalf("after %v: %d of %d distinct messages arrived", failAfter, have, n)
		}
	}
}

func (c *collector) snapshot() []*pubsub.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.got)
}

// seqPayload is what the order tests write: writer, the writer's sequence
// number and the writing transaction's xid (0 on SQLite).
func seqPayload(w, s int, xid uint64) []byte { return fmt.Appendf(nil, "%d:%d:%d", w, s, xid) }

type seqInfo struct {
	w, s int
	xid  uint64
}

func parseSeq(t testing.TB, p []byte) seqInfo {
	t.Helper()
	f := strings.Split(string(p), ":")
	if len(f) != 3 {
		t.Fatalf("payload %q: want w:s:xid", p)
	}
	w, _ := strconv.Atoi(f[0])
	s, _ := strconv.Atoi(f[1])
	x, _ := strconv.ParseUint(f[2], 10, 64)
	return seqInfo{w, s, x}
}

// checkOrder verifies that, per (topic, key), the first deliveries come in
// relay order: by (xid, writer sequence) when xids are known (Postgres:
// exactly (txid, id) order) and by writer sequence per writer always. It
// returns the number of duplicate deliveries.
func checkOrder(t testing.TB, delivered []*pubsub.Message) (dups int) {
	t.Helper()
	seen := map[string]bool{}
	last := map[string]seqInfo{}
	lastByWriter := map[string]int{}
	bad := 0
	for _, m := range delivered {
		if seen[m.ID] {
			dups++
			continue
		}
		seen[m.ID] = true
		cur := parseSeq(t, m.Payload)
		k := m.Topic + "\x00" + m.Key
		if p, ok := last[k]; ok && cur.xid != 0 {
			if cur.xid < p.xid || (cur.xid == p.xid && cur.s <= p.s) {
				if bad++; bad <= 5 {
					t.Errorf("key %q: %+v delivered after %+v: not in (txid, id) order", m.Key, cur, p)
				}
			}
		}
		last[k] = cur
		wk := k + "\x00" + strconv.Itoa(cur.w)
		if p, ok := lastByWriter[wk]; ok && cur.s <= p {
			if bad++; bad <= 5 {
				t.Errorf("key %q writer %d: seq %d delivered after %d", m.Key, cur.w, cur.s, p)
			}
		}
		lastByWriter[wk] = cur.s
	}
	if bad > 5 {
		t.Errorf("... %d order violations in all", bad)
	}
	return dups
}

// writeRows has `writers` goroutines write total rows over nkeys keys, in
// transactions of 1..maxPerTx rows, and returns the IDs written. topic may
// list several topics separated by "|": each row picks one at random.
func writeRows(t testing.TB, e *env, topic string, writers, total, nkeys, maxPerTx int) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), failAfter)
	defer cancel()
	topics := strings.Split(topic, "|")
	var mu sync.Mutex
	ids := make(map[string]bool, total)
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		share := total / writers
		if w < total%writers {
			share++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			seq := 0
			for seq < share {
				tx, err := e.begin(ctx)
				if err != nil {
					errs <- err
					return
				}
				if e.pg {
					// Fewer fsyncs; durability is not what this test is about.
					if err := tx.exec(ctx, `SET LOCAL synchronous_commit = off`); err != nil {
						errs <- err
						return
					}
				}
				var xid uint64
				xid, err = tx.xid(ctx)
				if err != nil {
					errs <- fmt.Errorf("xid: %w", err)
					return
				}
				n := min(share-seq, 1+rng.IntN(maxPerTx))
				msgs := make([]*pubsub.Message, n)
				for i := range msgs {
					msgs[i] = &pubsub.Message{Topic: topics[rng.IntN(len(topics))],
						Key:     "k" + strconv.Itoa(rng.IntN(nkeys)),
						Payload: seqPayload(w, seq+i, xid),
					}
				}
				half := n / 2
				for _, part := range [][]*pubsub.Message{msgs[:half], msgs[half:]} {
					for len(part) > 0 { // runs of one topic per Publish call
						run := 1
						for run < len(part) && part[run].Topic == part[0].Topic {
							run++
						}
						if err := e.store.Publish(ctx, tx.tx, part[0].Topic, part[:run]...); err != nil {
							errs <- err
							return
						}
						part = part[run:]
					}
				}
				if err := tx.commit(ctx); err != nil {
					errs <- fmt.Errorf("commit: %w", err)
					return
				}
				mu.Lock()
				for _, m := range msgs {
					ids[m.ID] = true
				}
				mu.Unlock()
				seq += n
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("writer: %v", err)
	}
	if len(ids) != total {
		t.Fatalf("wrote %d distinct IDs, want %d", len(ids), total)
	}
	return ids
}

// runRelay runs r until the test ends and reports a Run error.
func runRelay(t testing.TB, r *Relay) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("relay Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func newMemClient(t testing.TB) *pubsub.Client {
	t.Helper()
	c := memory.NewClient(memory.Options{})
	t.Cleanup(func() { c.Close() })
	return c
}

// pgxTx asserts the pgx type for tests that need it.
var _ PgxTx = pgx.Tx(nil)
