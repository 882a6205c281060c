package outbox

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/middleware/pgdedup"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
	"github.com/omnibusmq/omnibus/router"
)

// The killed-relay test re-executes this test binary as a relay process
// (TestMain sees childEnv) and SIGKILLs it at a chosen point of a batch.
const (
	childEnv      = "OMNIBUS_OUTBOX_TEST_CHILD" // kill point: before-publish, half-published, published-not-deleted
	childTable    = "OMNIBUS_OUTBOX_TEST_TABLE"
	childSink     = "OMNIBUS_OUTBOX_TEST_SINK"
	childKillCall = 3 // the SendBatch call at which the child stops (the second batch, as a rule)
	killSignal    = "KILL-ME-NOW"
	// killedCallPrefix starts the line listing the killed call's message IDs.
	killedCallPrefix = "KILLED-CALL "
)

func TestMain(m *testing.M) {
	if point := os.Getenv(childEnv); point != "" {
		os.Exit(runChildRelay(point))
	}
	os.Exit(m.Run())
}

// runChildRelay relays the table named in the environment into the sink
// table until its sink stops at the kill point and waits to be killed.
func runChildRelay(point string) int {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv(integration.EnvPostgres))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	store, err := NewPgxStore(pool, StoreOptions{Table: os.Getenv(childTable)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	sink := &sinkBroker{pool: pool, table: os.Getenv(childSink)}
	sink.hook = func(call int64, msgs []*driver.Message) (int, bool) {
		if call != childKillCall {
			return len(msgs), false
		}
		ids := make([]string, len(msgs))
		for i, m := range msgs {
			ids[i] = m.ID
		}
		fmt.Println(killedCallPrefix + strings.Join(ids, ","))
		switch point {
		case "before-publish":
			return 0, true
		case "half-published":
			return len(msgs) / 2, true
		default: // published-not-deleted
			return len(msgs), true
		}
	}
	client := pubsub.NewClient(sink)
	r, err := NewRelay(store, client, RelayOptions{BatchSize: 100, PollInterval: 10 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	if err := r.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	return 0
}

// sinkBroker is a broker whose topics are one Postgres table: what a relay
// in another process published is there to check, in publish order.
type sinkBroker struct {
	pool  *pgxpool.Pool
	table string
	calls atomic.Int64
	// hook (child only) says how many of a call's messages to store and
	// whether to stop there and wait to be killed.
	hook func(call int64, msgs []*driver.Message) (n int, stop bool)
	// after (parent only) runs after each stored batch.
	after func()
}

func createSink(ctx context.Context, pool *pgxpool.Pool, table string) error {
	_, err := pool.Exec(ctx, `CREATE TABLE `+table+` (seq BIGSERIAL PRIMARY KEY, topic TEXT NOT NULL, msg_id TEXT NOT NULL, msg_key TEXT NOT NULL, payload BYTEA NOT NULL)`)
	return err
}

func (s *sinkBroker) SendBatch(ctx context.Context, topic string, msgs []*driver.Message) error {
	call := s.calls.Add(1)
	n, stop := len(msgs), false
	if s.hook != nil {
		n, stop = s.hook(call, msgs)
	}
	if n > 0 {
		ids, keys, payloads := make([]string, n), make([]string, n), make([][]byte, n)
		for i, m := range msgs[:n] {
			ids[i], keys[i], payloads[i] = m.ID, m.Key, m.Payload
		}
		_, err := s.pool.Exec(ctx, `INSERT INTO `+s.table+` (topic, msg_id, msg_key, payload)
SELECT $1, u.i, u.k, u.p FROM unnest($2::text[], $3::text[], $4::bytea[]) WITH ORDINALITY AS u(i, k, p, o) ORDER BY u.o`,
			topic, ids, keys, payloads)
		if err != nil {
			return fmt.Errorf("sink: %w", err)
		}
	}
	if stop {
		fmt.Println(killSignal)
		select {} // mid-batch: wait for SIGKILL
	}
	if s.after != nil {
		s.after()
	}
	return nil
}

func (s *sinkBroker) OpenSubscription(context.Context, string, driver.SubscriptionOptions) (driver.Subscription, error) {
	return nil, fmt.Errorf("sink: subscribe: %w", driver.ErrUnsupported)
}
func (s *sinkBroker) Traits() driver.Traits { return driver.Traits{} }

func (s *sinkBroker) Capabilities() driver.Capabilities {
	return driver.Capabilities{OrderingPerKey: true, Persistence: true}
}
func (s *sinkBroker) Close() error { return nil }

// sinkRows reads what reached the sink, in publish order.
func sinkRows(t testing.TB, pool *pgxpool.Pool, table string) []*pubsub.Message {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT topic, msg_id, msg_key, payload FROM `+table+` ORDER BY seq`)
	if err != nil {
		t.Fatalf("read sink: %v", err)
	}
	defer rows.Close()
	var out []*pubsub.Message
	for rows.Next() {
		m := &pubsub.Message{}
		if err := rows.Scan(&m.Topic, &m.ID, &m.Key, &m.Payload); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestRelay_KilledMidBatchAndRestartedDeliversEveryRow: a relay process is
// SIGKILLed inside its second batch (before publishing, with half the batch
// published, or with it all published but not yet deleted); a relay started
// afterwards delivers every row at least once, per-key order of first
// deliveries kept, re-sending what the killed one published but never
// deleted.
func TestRelay_KilledMidBatchAndRestartedDeliversEveryRow(t *testing.T) {
	for _, c := range []struct {
		point   string
		mustDup bool // the killed call itself published rows
	}{
		{"before-publish", false},
		{"half-published", true},
		{"published-not-deleted", true},
	} {
		t.Run(c.point, func(t *testing.T) {
			k := killAndRestart(t, c.point)
			dups := checkOrder(t, k.delivered)
			if c.mustDup && dups == 0 {
				t.Fatalf("no duplicate deliveries: what the killed relay published but never deleted was not re-sent")
			}
			t.Logf("killed %s: %d rows in the sink before restart, %d duplicates after", c.point, k.beforeRestart, dups)
		})
	}
}

// TestRelay_KilledRelayWithPostgresDedupStoreHasEveryEffectOnce: the
// deliveries of a killed-and-restarted relay (duplicates included, in
// delivery order) go through middleware.Dedup with the Postgres store, and
// through the store's transactional handler: every message's effect happens
// exactly once.
func TestRelay_KilledRelayWithPostgresDedupStoreHasEveryEffectOnce(t *testing.T) {
	ctx := context.Background()
	k := killAndRestart(t, "published-not-deleted")
	if dups := len(k.delivered) - len(k.ids); dups == 0 {
		t.Fatal("the killed relay left no duplicates to deduplicate")
	}
	effects := uniqueTable("obx_effects")
	if _, err := k.pool.Exec(ctx, `CREATE TABLE `+effects+` (form TEXT NOT NULL, msg_id TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	inbox := uniqueTable("obx_inbox")
	t.Cleanup(func() {
		_, _ = k.pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+effects+`, "`+inbox+`"`)
	})
	store, err := pgdedup.New(ctx, k.pool, pgdedup.Options{Table: inbox})
	if err != nil {
		t.Fatal(err)
	}
	effect := func(form string) router.Handler {
		return func(ctx context.Context, m *pubsub.Message) error {
			_, err := k.pool.Exec(ctx, `INSERT INTO `+effects+` VALUES ($1, $2)`, form, m.ID)
			return err
		}
	}
	txHandler, err := store.Handler("relay-test", func(ctx context.Context, tx pgx.Tx, m *pubsub.Message) error {
		_, err := tx.Exec(ctx, `INSERT INTO `+effects+` VALUES ('tx', $1)`, m.ID)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	forms := map[string]router.Handler{
		"dedup": middleware.Dedup(store, middleware.DedupOptions{Key: func(m *pubsub.Message) string { return "dedup/" + m.ID }}).Wrap(effect("dedup")),
		"tx":    txHandler,
	}
	for _, m := range k.delivered {
		for form, h := range forms {
			if err := h(ctx, m); err != nil {
				t.Fatalf("%s handler on %q: %v", form, m.ID, err)
			}
		}
	}
	for form := range forms {
		var distinct, total int
		if err := k.pool.QueryRow(ctx, `SELECT count(DISTINCT msg_id), count(*) FROM `+effects+` WHERE form = $1`, form).Scan(&distinct, &total); err != nil {
			t.Fatal(err)
		}
		if distinct != len(k.ids) || total != len(k.ids) {
			t.Errorf("%s: %d effects for %d distinct messages; want exactly one for each of %d (from %d deliveries)",
				form, total, distinct, len(k.ids), len(k.delivered))
		}
	}
}

type killed struct {
	pool          *pgxpool.Pool
	ids           map[string]bool
	delivered     []*pubsub.Message // what reached the sink, in order
	beforeRestart int
}

// killAndRestart writes 2000 rows over two topics, runs a relay process,
// SIGKILLs it at point in its second batch, checks the killed batch stayed
// in the outbox, then runs a new relay until every row reached the sink.
func killAndRestart(t *testing.T, point string) killed {
	t.Helper()
	ctx := context.Background()
	e := newEnv(t, "postgres-pgx")
	pool := e.store.be.(*pgxBackend).pool
	sinkTable := uniqueTable("obx_sink")
	if err := createSink(ctx, pool, sinkTable); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+sinkTable) })
	// Two topics mixed in every batch: two concurrent publishes per batch.
	const total = 2000
	ids := writeRows(t, e, "orders|payments", 4, total, 20, 10)

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+point, childTable+"="+e.store.Table(), childSink+"="+sinkTable,
		integration.EnvPostgres+"="+integration.Postgres(t))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	signalled := make(chan bool, 1)
	var killedIDs []string
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if after, ok := strings.CutPrefix(sc.Text(), killedCallPrefix); ok {
				killedIDs = strings.Split(after, ",")
			}
			if sc.Text() == killSignal {
				signalled <- true
				_, _ = io.Copy(io.Discard, stdout)
				return
			}
		}
		signalled <- false
	}()
	select {
	case ok := <-signalled:
		if !ok {
			_ = cmd.Wait()
			t.Fatalf("child relay exited before its kill point; stderr:\n%s", stderr.String())
		}
	case <-time.After(failAfter):
		_ = cmd.Process.Kill()
		t.Fatalf("child relay never reached its kill point; stderr:\n%s", stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child did not die of SIGKILL: %v", err)
	}
	before := len(sinkRows(t, pool, sinkTable))
	// The killed call's rows were never confirmed: all still in the outbox.
	var kept int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+e.store.w.t.quoted()+` WHERE msg_id = ANY($1)`, killedIDs).Scan(&kept); err != nil {
		t.Fatal(err)
	}
	if len(killedIDs) == 0 || kept != len(killedIDs) {
		t.Fatalf("after the kill %d of the killed call's %d rows are in the outbox; want all (deleted only after the broker confirmed)", kept, len(killedIDs))
	}
	if left := e.rows(t); left == 0 || left > total-len(killedIDs) {
		t.Fatalf("after the kill %d rows are left in the outbox; want between %d and %d", left, len(killedIDs), total)
	}

	// Restart: a new relay delivers the rest.
	sink := &sinkBroker{pool: pool, table: sinkTable}
	done := make(chan struct{})
	var closed atomic.Bool
	sink.after = func() {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(DISTINCT msg_id) FROM `+sinkTable).Scan(&n); err == nil && n == total && closed.CompareAndSwap(false, true) {
			close(done)
		}
	}
	client := pubsub.NewClient(sink)
	t.Cleanup(func() { client.Close() })
	r, err := NewRelay(e.store, client, RelayOptions{BatchSize: 100, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := runRelay(t, r)
	select {
	case <-done:
	case <-time.After(failAfter):
		t.Fatalf("restarted relay did not deliver all %d rows", total)
	}
	stop()
	got := sinkRows(t, pool, sinkTable)
	seen := map[string]bool{}
	for _, m := range got {
		if !ids[m.ID] {
			t.Fatalf("unknown message %q in the sink", m.ID)
		}
		seen[m.ID] = true
	}
	if len(seen) != total {
		t.Fatalf("%d distinct rows delivered, want %d", len(seen), total)
	}
	return killed{pool: pool, ids: ids, delivered: got, beforeRestart: before}
}
