package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/omnibusmq/omnibus/config"
	"github.com/omnibusmq/omnibus/outbox"
	"github.com/omnibusmq/omnibus/pubsub"
)

// RelayCmd runs the outbox relay as a sidecar.
type RelayCmd struct {
	DB      string        `required:"" help:"Database holding the outbox: postgres://... or sqlite:<path>." env:"OMNIBUS_OUTBOX_DB"`
	To      string        `help:"Broker URL to forward to (default: $OMNIBUS_URL)." placeholder:"URL"`
	Table   string        `help:"Outbox table (default omnibus_outbox)."`
	Batch   int           `help:"Rows per batch (default 1000)."`
	Migrate bool          `help:"Create the outbox table if missing."`
	Lag     time.Duration `default:"1m" help:"How often to log the backlog (0 disables)."`
}

// Run relays until interrupted.
func (rc *RelayCmd) Run(ctx context.Context) error {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	var store *outbox.Store
	var err error
	switch {
	case strings.HasPrefix(rc.DB, "postgres://"), strings.HasPrefix(rc.DB, "postgresql://"):
		pool, perr := pgxpool.New(ctx, rc.DB)
		if perr != nil {
			return fmt.Errorf("relay: --db %s: %w", pubsub.Redact(rc.DB), pubsub.RedactError(perr, rc.DB))
		}
		defer pool.Close()
		store, err = outbox.NewPgxStore(pool, outbox.StoreOptions{Table: rc.Table})
	case strings.HasPrefix(rc.DB, "sqlite:"):
		db, oerr := sql.Open("sqlite", "file:"+strings.TrimPrefix(rc.DB, "sqlite:")+"?_pragma=busy_timeout(20000)&_pragma=journal_mode(WAL)")
		if oerr != nil {
			return fmt.Errorf("relay: --db %s: %w", rc.DB, oerr)
		}
		defer db.Close()
		store, err = outbox.NewSQLStore(db, outbox.SQLite, outbox.StoreOptions{Table: rc.Table})
	default:
		return fmt.Errorf("relay: --db=%q: want postgres://... or sqlite:<path>", pubsub.Redact(rc.DB))
	}
	if err != nil {
		return err
	}
	if rc.Migrate {
		if err := store.Migrate(ctx); err != nil {
			return err
		}
	}
	bc := config.Config{URL: rc.To}
	if rc.To == "" {
		if bc, err = config.Load(""); err != nil {
			return fmt.Errorf("relay: %w (or pass --to)", err)
		}
	}
	client, err := bc.Open(ctx)
	if err != nil {
		return err
	}
	defer client.Close()
	lagEvery := rc.Lag
	if lagEvery == 0 {
		lagEvery = -1
	}
	relay, err := outbox.NewRelay(store, client, outbox.RelayOptions{BatchSize: rc.Batch, Logger: log, LagLogInterval: lagEvery})
	if err != nil {
		return err
	}
	log.Info("omnibus relay started", "db", pubsub.Redact(rc.DB), "table", store.Table(), "to", bc.String())
	err = relay.Run(ctx)
	log.Info("omnibus relay stopped", "forwarded", relay.Forwarded())
	if ctx.Err() != nil {
		return nil
	}
	return err
}
