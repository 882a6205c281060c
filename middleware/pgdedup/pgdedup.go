// Package pgdedup is the PostgreSQL store for middleware.Dedup (an inbox
// table with a unique key), plus a transactional form for exactly-once
// effects.
//
// Two ways to use it:
//
//   - Store implements middleware.DedupStore: Claim takes a key with a lease
//     (an expired lease can be claimed again), Complete marks it done and
//     keeps it for TTL, Release drops a failed claim so a redelivery runs the
//     handler again. Effects are "effectively once": a crash after the
//     handler's effect but before Complete runs it again after the lease.
//   - Store.Handler runs the handler's own database work and the inbox
//     insert in ONE transaction: both commit or neither, so the effect
//     happens exactly once however often the message is delivered, even
//     concurrently.
//
// The table (Options.Schema, Options.Table; default public.omnibus_inbox):
//
//	CREATE TABLE omnibus_inbox (
//		key        text PRIMARY KEY,
//		done       boolean NOT NULL,      -- false: claimed (lease), true: processed
//		token      uuid,                  -- the claim's owner, for Release
//		expires_at timestamptz NOT NULL,  -- lease end, or done + TTL
//		updated_at timestamptz NOT NULL DEFAULT now()
//	);
//	CREATE INDEX omnibus_inbox_expires ON omnibus_inbox (expires_at);
//
// Rows past expires_at are forgotten: Claim treats them as absent and
// Cleanup (or RunCleanup in the background) deletes them.
package pgdedup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

// Options configure a Store. Zero values mean the documented defaults; New
// rejects bad values with an error wrapping pubsub.ErrInvalid naming the
// field.
type Options struct {
	// Schema holds the table. Default "public".
	Schema string
	// Table is the inbox table's name (quoted, so any name is safe).
	// Default "omnibus_inbox"; at most 50 bytes.
	Table string
	// TTL is how long a processed key is remembered (at least; Cleanup
	// deletes it afterwards). Default 7 days; at least 1s.
	TTL time.Duration
	// SkipMigrate stops New from creating the table. Default false.
	SkipMigrate bool
	// Logger receives RunCleanup failures. Default slog.Default().
	Logger *slog.Logger
}

// Store is a middleware.DedupStore on PostgreSQL. It is safe for concurrent
// use by many goroutines and processes.
type Store struct {
	pool  *pgxpool.Pool
	opts  Options
	table string // quoted, schema-qualified

	mu     sync.Mutex
	tokens map[string]uuid.UUID // key -> token of the claim this Store holds

	sqlClaim, sqlState, sqlComplete, sqlRelease, sqlCleanup, sqlInsertDone string
}

var _ middleware.DedupStore = (*Store)(nil)

// New returns a Store on pool, creating the table unless opts.SkipMigrate.
// The caller keeps ownership of pool.
func New(ctx context.Context, pool *pgxpool.Pool, opts Options) (*Store, error) {
	if pool == nil {
		return nil, fmt.Errorf("pgdedup: New: pool is nil: %w", pubsub.ErrInvalid)
	}
	if opts.Schema == "" {
		opts.Schema = "public"
	}
	if opts.Table == "" {
		opts.Table = "omnibus_inbox"
	}
	if opts.TTL == 0 {
		opts.TTL = 7 * 24 * time.Hour
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	switch {
	case len(opts.Schema) > 63:
		return nil, fmt.Errorf("pgdedup: Options.Schema %q is over 63 bytes: %w", opts.Schema, pubsub.ErrInvalid)
	case len(opts.Table) > 50:
		return nil, fmt.Errorf("pgdedup: Options.Table %q is over 50 bytes: %w", opts.Table, pubsub.ErrInvalid)
	case opts.TTL < time.Second:
		return nil, fmt.Errorf("pgdedup: Options.TTL = %v: want at least 1s: %w", opts.TTL, pubsub.ErrInvalid)
	}
	t := pgx.Identifier{opts.Schema, opts.Table}.Sanitize()
	s := &Store{pool: pool, opts: opts, table: t, tokens: map[string]uuid.UUID{}}
	us := `$2::bigint * interval '1 microsecond'`
	s.sqlClaim = `INSERT INTO ` + t + ` AS i (key, done, token, expires_at) VALUES ($1, false, $3, now() + ` + us + `)
ON CONFLICT (key) DO UPDATE SET done = false, token = EXCLUDED.token, expires_at = EXCLUDED.expires_at, updated_at = now()
WHERE i.expires_at <= now()
RETURNING true`
	s.sqlState = `SELECT done FROM ` + t + ` WHERE key = $1 AND expires_at > now()`
	s.sqlComplete = `INSERT INTO ` + t + ` AS i (key, done, token, expires_at) VALUES ($1, true, NULL, now() + ` + us + `)
ON CONFLICT (key) DO UPDATE SET done = true, token = NULL, expires_at = EXCLUDED.expires_at, updated_at = now()`
	s.sqlRelease = `DELETE FROM ` + t + ` WHERE key = $1 AND NOT done AND token = $2`
	s.sqlCleanup = `DELETE FROM ` + t + ` WHERE expires_at <= now()`
	s.sqlInsertDone = `INSERT INTO ` + t + ` (key, done, expires_at) VALUES ($1, true, now() + ` + us + `) ON CONFLICT (key) DO NOTHING`
	if !opts.SkipMigrate {
		if err := s.Migrate(ctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Table returns the quoted, schema-qualified inbox table name.
func (s *Store) Table() string { return s.table }

// Migrate creates the schema (if not public), table and index if missing.
// It is idempotent and safe to run concurrently.
func (s *Store) Migrate(ctx context.Context) error {
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('omnibus-pgdedup'), hashtext($1))`, s.table); err != nil {
			return err
		}
		var stmts []string
		if s.opts.Schema != "public" {
			stmts = append(stmts, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{s.opts.Schema}.Sanitize())
		}
		stmts = append(stmts,
			`CREATE TABLE IF NOT EXISTS `+s.table+` (
				key        text PRIMARY KEY,
				done       boolean NOT NULL,
				token      uuid,
				expires_at timestamptz NOT NULL,
				updated_at timestamptz NOT NULL DEFAULT now()
			)`,
			`CREATE INDEX IF NOT EXISTS `+pgx.Identifier{s.opts.Table + "_expires"}.Sanitize()+` ON `+s.table+` (expires_at)`)
		for _, st := range stmts {
			if _, err := tx.Exec(ctx, st); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pgdedup: migrate %s: %w", s.table, err)
	}
	return nil
}

// Claim implements middleware.DedupStore. Of concurrent Claims of one key,
// from any number of processes, exactly one gets ClaimAcquired (the unique
// key decides); the others get ClaimBusy until the winner calls Complete
// (then ClaimDone) or Release or its lease expires (then one of them can
// acquire it).
func (s *Store) Claim(ctx context.Context, key string, lease time.Duration) (middleware.ClaimResult, error) {
	if key == "" {
		return 0, fmt.Errorf("pgdedup: claim: key is empty: %w", pubsub.ErrInvalid)
	}
	if lease <= 0 {
		return 0, fmt.Errorf("pgdedup: claim %q: lease %v: want > 0: %w", key, lease, pubsub.ErrInvalid)
	}
	for range 3 {
		tok := uuid.New()
		var ok bool
		err := s.pool.QueryRow(ctx, s.sqlClaim, key, lease.Microseconds(), tok).Scan(&ok)
		if err == nil {
			s.mu.Lock()
			s.tokens[key] = tok
			s.mu.Unlock()
			return middleware.ClaimAcquired, nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return 0, fmt.Errorf("pgdedup: claim %q: %w", key, err)
		}
		var done bool
		err = s.pool.QueryRow(ctx, s.sqlState, key).Scan(&done)
		switch {
		case err == nil && done:
			return middleware.ClaimDone, nil
		case err == nil:
			return middleware.ClaimBusy, nil
		case !errors.Is(err, pgx.ErrNoRows):
			return 0, fmt.Errorf("pgdedup: claim %q: read state: %w", key, err)
		}
		// The row expired or was released between the two statements: try again.
	}
	return middleware.ClaimBusy, nil
}

// Complete implements middleware.DedupStore: key is remembered as processed
// for TTL from now, whoever held its claim.
func (s *Store) Complete(ctx context.Context, key string) error {
	s.mu.Lock()
	delete(s.tokens, key)
	s.mu.Unlock()
	if _, err := s.pool.Exec(ctx, s.sqlComplete, key, s.opts.TTL.Microseconds()); err != nil {
		return fmt.Errorf("pgdedup: complete %q: %w", key, err)
	}
	return nil
}

// Release implements middleware.DedupStore: it deletes the claim this Store
// made on key (matched by its token), so a redelivery can acquire it at
// once. It never drops a done row, nor a claim made by another Store or
// process (that one ends with its lease).
func (s *Store) Release(ctx context.Context, key string) error {
	s.mu.Lock()
	tok, ok := s.tokens[key]
	delete(s.tokens, key)
	s.mu.Unlock()
	if !ok {
		return nil
	}
	if _, err := s.pool.Exec(ctx, s.sqlRelease, key, tok); err != nil {
		return fmt.Errorf("pgdedup: release %q: %w", key, err)
	}
	return nil
}

// Cleanup deletes expired rows (done keys past their TTL, abandoned claims
// past their lease) and returns how many.
func (s *Store) Cleanup(ctx context.Context) (int64, error) {
	tag, err := s.pool.Exec(ctx, s.sqlCleanup)
	if err != nil {
		return 0, fmt.Errorf("pgdedup: cleanup %s: %w", s.table, err)
	}
	return tag.RowsAffected(), nil
}

// RunCleanup calls Cleanup every interval until ctx ends, logging failures,
// and returns ctx's error. Run it in one goroutine per process (running it
// in several is harmless).
func (s *Store) RunCleanup(ctx context.Context, every time.Duration) error {
	if every <= 0 {
		return fmt.Errorf("pgdedup: RunCleanup: interval %v: want > 0: %w", every, pubsub.ErrInvalid)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if n, err := s.Cleanup(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			s.opts.Logger.Warn("pgdedup: cleanup failed", "table", s.table, "error", err)
		} else if n > 0 {
			s.opts.Logger.Debug("pgdedup: cleanup", "table", s.table, "deleted", n)
		}
	}
}

// TxFunc does a handler's database work inside the transaction that also
// records the message in the inbox.
type TxFunc func(ctx context.Context, tx pgx.Tx, m *pubsub.Message) error

// Handler returns a router handler with exactly-once effects: in ONE
// transaction it inserts the inbox row for (consumer, message ID) and runs
// fn; both commit or neither. A message whose row exists (already processed
// by this consumer, within TTL) returns nil without running fn. A concurrent
// duplicate waits on the row's unique key until the first commits (then it
// skips) or rolls back (then it runs). An error from fn, or a failed commit,
// rolls everything back and is returned, so the message is redelivered and
// processed again.
//
// consumer names the handler, so that two handlers that receive the same
// message (fan-out) each process it once. Only fn's work on tx is covered:
// side effects outside the database are not.
func (s *Store) Handler(consumer string, fn TxFunc) (router.Handler, error) {
	if consumer == "" {
		return nil, fmt.Errorf("pgdedup: Handler: consumer is empty: %w", pubsub.ErrInvalid)
	}
	if fn == nil {
		return nil, fmt.Errorf("pgdedup: Handler %q: fn is nil: %w", consumer, pubsub.ErrInvalid)
	}
	return func(ctx context.Context, m *pubsub.Message) error {
		key := consumer + "/" + m.ID
		tx, err := s.pool.Begin(ctx)
		if err != nil {
			return fmt.Errorf("pgdedup: %s: message %q: begin: %w", consumer, m.ID, err)
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		tag, err := tx.Exec(ctx, s.sqlInsertDone, key, s.opts.TTL.Microseconds())
		if err != nil {
			return fmt.Errorf("pgdedup: %s: message %q: insert inbox row: %w", consumer, m.ID, err)
		}
		if tag.RowsAffected() == 0 {
			return nil // processed before: skip, ack
		}
		if err := fn(ctx, tx, m); err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return fmt.Errorf("pgdedup: %s: message %q: commit: %w", consumer, m.ID, err)
		}
		return nil
	}, nil
}
