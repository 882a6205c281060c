package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/outbox"
	"github.com/omnibusmq/omnibus/pubsub"
	_ "modernc.org/sqlite"
)

// The package's headline on PostgreSQL: the event is written in the same
// transaction as the business data, and a relay forwards it once the
// transaction committed. (Compiled, not run: it needs a database.)
func Example_postgres() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	client, err := pubsub.Open(ctx, "mem://")
	if err != nil {
		log.Fatal(err)
	}
	if err := outbox.Migrate(ctx, pool); err != nil {
		log.Fatal(err)
	}

	tx, err := pool.Begin(ctx)
	if err != nil {
		log.Fatal(err)
	}
	// ... business writes on tx ...
	if err := outbox.Publish(ctx, tx, "orders.created", &pubsub.Message{Key: "order-1", Payload: []byte(`{"id":1}`)}); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		log.Fatal(err)
	}

	store, err := outbox.NewPgxStore(pool, outbox.StoreOptions{})
	if err != nil {
		log.Fatal(err)
	}
	relay, err := outbox.NewRelay(store, client, outbox.RelayOptions{})
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(relay.Run(ctx))
}

// The same on SQLite through database/sql: publish in a transaction, then a
// relay forwards the committed row to the broker; Lag shows what waits and
// Leader whether this relay holds the lead.
func ExampleNewRelay() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, _ := os.MkdirTemp("", "outbox-example")
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "app.db"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	client := memory.NewClient(memory.Options{})
	defer client.Close()
	sub, err := client.Subscribe(ctx, "orders.created", pubsub.Group("billing"))
	if err != nil {
		log.Fatal(err)
	}

	store, err := outbox.NewSQLStore(db, outbox.SQLite, outbox.StoreOptions{})
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	// ... business writes on tx ...
	if err := store.Publish(ctx, tx, "orders.created", &pubsub.Message{Key: "order-1", Payload: []byte(`{"id":1}`)}); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
	lag, err := store.Lag(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("waiting in the outbox:", lag.Rows)

	relay, err := outbox.NewRelay(store, client, outbox.RelayOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		log.Fatal(err)
	}
	go func() { _ = relay.Run(ctx) }()
	d, err := sub.Receive(ctx)
	if err != nil {
		log.Fatal(err)
	}
	_ = d.Ack()
	fmt.Println("received", d.Message.Key, string(d.Message.Payload), "leader:", relay.Leader())
	// Output:
	// waiting in the outbox: 1
	// received order-1 {"id":1} leader: true
}

// DDL returns the statements Migrate runs, for a migration tool.
func ExampleStore_DDL() {
	store, err := outbox.NewSQLStore(&sql.DB{}, outbox.SQLite, outbox.StoreOptions{Table: "app_outbox"})
	if err != nil {
		log.Fatal(err)
	}
	for _, stmt := range store.DDL() {
		fmt.Println(strings.Join(strings.Fields(stmt)[:6], " "))
	}
	// Output:
	// CREATE TABLE IF NOT EXISTS "app_outbox"
	// CREATE TABLE IF NOT EXISTS "app_outbox_quarantine"
}
