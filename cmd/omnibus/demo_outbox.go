package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/omnibusmq/omnibus/outbox"
	"github.com/omnibusmq/omnibus/pubsub"
)

// outboxStage writes the demo's orders into an in-memory SQLite database,
// each batch in one transaction together with its events (the transactional
// outbox), and relays the committed events to the broker. One extra batch is
// rolled back: none of its events may ever reach the broker.
type outboxStage struct {
	db        *sql.DB
	store     *outbox.Store
	relay     *outbox.Relay
	txs       atomic.Int64 // committed transactions
	rolled    int          // orders in the rolled-back transaction
	written   atomic.Int64 // event rows committed (duplicates included)
	finished  atomic.Bool  // writeOrders returned
	relayDone chan error
}

var demoDBSeq atomic.Int64

func newOutboxStage(ctx context.Context, client *pubsub.Client) (*outboxStage, error) {
	dsn := fmt.Sprintf("file:omnibus-demo-%d-%d?mode=memory&cache=shared&_pragma=busy_timeout(10000)", os.Getpid(), demoDBSeq.Add(1))
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("demo: open sqlite: %w", err)
	}
	db.SetMaxOpenConns(4)
	if _, err := db.ExecContext(ctx, `CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, amount REAL NOT NULL)`); err != nil {
		db.Close()
		return nil, fmt.Errorf("demo: create orders table: %w", err)
	}
	store, err := outbox.NewSQLStore(db, outbox.SQLite, outbox.StoreOptions{})
	if err == nil {
		err = store.Migrate(ctx)
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	relay, err := outbox.NewRelay(store, client, outbox.RelayOptions{Logger: quiet, LagLogInterval: -1})
	if err != nil {
		db.Close()
		return nil, err
	}
	return &outboxStage{db: db, store: store, relay: relay, relayDone: make(chan error, 1)}, nil
}

// run starts the relay; it stops when ctx ends.
func (o *outboxStage) run(ctx context.Context) { go func() { o.relayDone <- o.relay.Run(ctx) }() }

// wait returns the relay's result after ctx ended.
func (o *outboxStage) wait() error { return <-o.relayDone }

func (o *outboxStage) close() { o.db.Close() }

// writeOrders writes n orders (the same faults as the direct publisher) in
// transactions of 100, then one more transaction that is rolled back.
func (o *outboxStage) writeOrders(ctx context.Context, topic string, n int, st *pipelineStats) error {
	const batch = 100
	for start := 0; start < n; start += batch {
		if err := o.tx(ctx, topic, start, min(start+batch, n), st, true); err != nil {
			return err
		}
	}
	// Orders n..n+99 are written and rolled back: if any of their events
	// escaped, the handler would poison it as out of range and the table
	// would report it.
	o.rolled = batch
	err := o.tx(ctx, topic, n, n+batch, nil, false)
	o.finished.Store(true)
	return err
}

// drained reports whether every committed event was published and deleted.
func (o *outboxStage) drained() bool {
	return o.finished.Load() && o.relay.Forwarded() >= o.written.Load()
}

func (o *outboxStage) tx(ctx context.Context, topic string, from, to int, st *pipelineStats, commit bool) error {
	tx, err := o.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("demo: begin: %w", err)
	}
	defer tx.Rollback()
	var msgs []*pubsub.Message
	for id := from; id < to; id++ {
		ord, ms := demoOrder(id)
		if _, err := tx.ExecContext(ctx, `INSERT INTO orders (id, customer, amount) VALUES (?, ?, ?)`, ord.ID, ord.Customer, ord.Amount); err != nil {
			return fmt.Errorf("demo: insert order %d: %w", id, err)
		}
		msgs = append(msgs, ms...)
	}
	if err := o.store.Publish(ctx, tx, topic, msgs...); err != nil {
		return err
	}
	if !commit {
		return tx.Rollback()
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("demo: commit: %w", err)
	}
	o.txs.Add(1)
	o.written.Add(int64(len(msgs)))
	if st != nil {
		st.published.Add(int64(to - from))
	}
	return nil
}

// report prints the outbox line and fails if rows were left behind, if the
// rolled-back orders exist, or if the relay forwarded a different count.
func (o *outboxStage) report(ctx context.Context, out io.Writer) error {
	lag, err := o.store.Lag(ctx)
	if err != nil {
		return err
	}
	var orders, ghost int
	if err := o.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM orders`).Scan(&orders); err != nil {
		return err
	}
	if err := o.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM orders WHERE id >= (SELECT MIN(id) FROM orders) + ?`, orders).Scan(&ghost); err != nil {
		return err
	}
	fmt.Fprintf(out, "outbox (SQLite, in memory): %d orders committed with %d events in %d transactions; 1 transaction of %d orders rolled back (no events); relay forwarded %d; %d left in the outbox\n",
		orders, o.written.Load(), o.txs.Load(), o.rolled, o.relay.Forwarded(), lag.Rows)
	var problems []string
	if lag.Rows != 0 {
		problems = append(problems, fmt.Sprintf("%d events never left the outbox", lag.Rows))
	}
	if o.relay.Forwarded() != o.written.Load() {
		problems = append(problems, fmt.Sprintf("relay forwarded %d events, %d were committed", o.relay.Forwarded(), o.written.Load()))
	}
	if ghost != 0 {
		problems = append(problems, fmt.Sprintf("%d rolled-back orders are in the database", ghost))
	}
	if len(problems) > 0 {
		return errors.New("demo: outbox: " + fmt.Sprint(problems))
	}
	return nil
}
