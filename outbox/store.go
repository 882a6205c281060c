package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/omnibusmq/omnibus/pubsub"
)

// StoreOptions configure a Store. The zero value is valid.
type StoreOptions struct {
	// Table is the outbox table, "name" or "schema.name": each part
	// [A-Za-z_][A-Za-z0-9_]*, at most 50 bytes, 63 bytes in all (on
	// Postgres it is also the NOTIFY channel). It is always quoted, so case
	// matters. Empty means DefaultTable ("omnibus_outbox").
	Table string
}

// Store is one outbox table in one database: it writes rows (Publish),
// creates the table (Migrate), reports the backlog (Lag), and is what a
// Relay reads. Build it with NewPgxStore or NewSQLStore. It is safe for
// concurrent use and holds no connection of its own: each Relay opens its
// own dedicated connections from the pool or *sql.DB.
type Store struct {
	w  *writer
	be backend
}

// Lag is the outbox backlog: rows committed and not yet deleted by a relay.
type Lag struct {
	// Rows is the number of rows in the table (committed, not yet relayed;
	// a row is deleted only after the broker confirmed it).
	Rows int64
	// Oldest is when the oldest row's transaction started (Postgres) or its
	// Publish ran (SQLite); zero when Rows is 0.
	Oldest time.Time
	// Age is how long the oldest row has waited (0 when Rows is 0),
	// measured by the database's clock on Postgres.
	Age time.Duration
}

// backend is a database behind a Store.
type backend interface {
	migrate(ctx context.Context) error
	lag(ctx context.Context) (Lag, error)
	// session opens a dedicated connection for one relay.
	session(ctx context.Context) (session, error)
	// listen, when non-nil, blocks on a dedicated connection calling wake
	// once it listens and on every notification, until ctx ends (nil) or
	// the connection fails (an error).
	listener() func(ctx context.Context, wake func()) error
}

// session is one relay's dedicated connection; it is not safe for
// concurrent use.
type session interface {
	// tryLead takes the table's leader lock if free; true while held.
	tryLead(ctx context.Context) (bool, error)
	// fetch returns up to n rows that are safe to relay, in relay order;
	// heldBack reports rows that are committed but not yet safe (an older
	// transaction is still running).
	fetch(ctx context.Context, n int) (rows []row, heldBack bool, err error)
	// remove deletes relayed rows.
	remove(ctx context.Context, ids []int64) error
	// quarantine moves one row to the quarantine table with the reason, in
	// one transaction.
	quarantine(ctx context.Context, id int64, reason string) error
	close()
}

// row is one outbox row as the relay reads it.
type row struct {
	id    int64
	topic string
	msg   *pubsub.Message
	bad   error // why the row cannot be decoded; it goes to the quarantine
}

// rowCursor is what pgx.Rows and *sql.Rows share for reading outbox rows.
type rowCursor interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// readRows reads every row of rs, whose columns are id, topic, msg_id,
// msg_key, payload and metadata (NULL or a JSON object of strings). The
// caller closes rs.
func readRows(rs rowCursor) ([]row, error) {
	var out []row
	for rs.Next() {
		var (
			id                int64
			topic, msgID, key string
			payload           []byte
			meta              *string
		)
		if err := rs.Scan(&id, &topic, &msgID, &key, &payload, &meta); err != nil {
			return nil, err
		}
		out = append(out, decodeRow(id, topic, msgID, key, payload, meta))
	}
	return out, rs.Err()
}

// decodeRow turns the columns of one row into a message; a row that cannot
// be relayed as it is has bad set to the reason.
func decodeRow(id int64, topic, msgID, key string, payload []byte, meta *string) row {
	m := &pubsub.Message{ID: msgID, Key: key, Payload: payload}
	r := row{id: id, topic: topic, msg: m}
	if meta != nil && *meta != "" && *meta != "null" {
		if err := json.Unmarshal([]byte(*meta), &m.Metadata); err != nil {
			r.bad = fmt.Errorf("metadata is not a JSON object of strings: %w", err)
			return r
		}
	}
	if err := pubsub.ValidateTopic(topic); err != nil {
		r.bad = fmt.Errorf("topic: %w", err)
	} else if msgID == "" {
		r.bad = fmt.Errorf("msg_id is empty: %w", pubsub.ErrInvalid)
	}
	return r
}

// NewPgxStore returns the outbox Store of a PostgreSQL database reached
// through pool. Publish accepts pgx transactions (and *sql.Tx) on it; each
// Relay on it opens two dedicated connections with the pool's connection
// config (one holds the leader lock and does the work, one LISTENs), outside
// the pool's limits. A bad option is an error wrapping pubsub.ErrInvalid.
func NewPgxStore(pool *pgxpool.Pool, opts StoreOptions) (*Store, error) {
	if pool == nil {
		return nil, fmt.Errorf("outbox: NewPgxStore: pool is nil: %w", pubsub.ErrInvalid)
	}
	t, err := parseTable(opts.Table)
	if err != nil {
		return nil, err
	}
	return &Store{w: newWriter(Postgres, t), be: &pgxBackend{pool: pool, t: t, q: newPgQueries(t)}}, nil
}

// NewSQLStore returns the outbox Store of db, whose SQL dialect is d
// (Postgres or SQLite). Publish accepts *sql.Tx of db. Each Relay on it
// holds one dedicated connection of db (two on Postgres with the pgx stdlib
// driver, whose second one LISTENs; other Postgres drivers poll).
//
// SQLite: use a DSN with a busy timeout and WAL, e.g. with modernc.org/sqlite
// "file:app.db?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)", so
// writers and the relay wait for each other instead of failing with
// SQLITE_BUSY. SQLite has no advisory locks: relays on one *sql.DB elect a
// leader in process, but relays in two processes on one SQLite file would
// both send (duplicates, and no order across them): run one relay process
// per SQLite database.
func NewSQLStore(db *sql.DB, d Dialect, opts StoreOptions) (*Store, error) {
	if db == nil {
		return nil, fmt.Errorf("outbox: NewSQLStore: db is nil: %w", pubsub.ErrInvalid)
	}
	if d != Postgres && d != SQLite {
		return nil, fmt.Errorf("outbox: NewSQLStore: dialect %v: want outbox.Postgres or outbox.SQLite: %w", d, pubsub.ErrInvalid)
	}
	t, err := parseTable(opts.Table)
	if err != nil {
		return nil, err
	}
	be := &sqlBackend{db: db, d: d, t: t}
	if d == Postgres {
		be.pg = newPgQueries(t)
	}
	return &Store{w: newWriter(d, t), be: be}, nil
}

// Table returns the table name as configured (also the NOTIFY channel).
func (s *Store) Table() string { return s.w.t.raw }

// QuarantineTable returns the name of the table where the relay moves rows
// it cannot relay: the outbox table's name with QuarantineSuffix.
func (s *Store) QuarantineTable() string { return s.w.t.raw + QuarantineSuffix }

// Dialect returns the store's SQL dialect.
func (s *Store) Dialect() Dialect { return s.w.d }

// DDL returns the statements Migrate runs: the table and, on Postgres, its
// (txid, id) index. They are idempotent (IF NOT EXISTS).
func (s *Store) DDL() []string { return ddl(s.w.d, s.w.t) }

// Migrate creates the outbox table (and index) if missing. On Postgres it
// runs in one transaction under an advisory lock, so concurrent Migrates
// from several processes are safe.
func (s *Store) Migrate(ctx context.Context) error {
	if err := s.be.migrate(ctx); err != nil {
		return fmt.Errorf("outbox: migrate table %s: %w", s.w.t.raw, err)
	}
	return nil
}

// Publish writes msgs for topic into the store's table inside the caller's
// transaction tx: a pgx.Tx (Postgres stores only) or a *sql.Tx — see the
// package-level Publish for the promises. On SQLite it also wakes the
// relays of this table in this process.
func (s *Store) Publish(ctx context.Context, tx any, topic string, msgs ...*pubsub.Message) error {
	return s.w.publish(ctx, tx, topic, msgs)
}

// Lag reports the backlog: how many rows wait and how old the oldest is.
func (s *Store) Lag(ctx context.Context) (Lag, error) {
	l, err := s.be.lag(ctx)
	if err != nil {
		return Lag{}, fmt.Errorf("outbox: lag of table %s: %w", s.w.t.raw, err)
	}
	return l, nil
}

// Migrate creates DefaultTable in db if missing. db is a *pgxpool.Pool
// (Postgres) or a *sql.DB whose dialect is guessed from its driver's
// package path: one containing "sqlite" means SQLite, anything else
// Postgres. For another table, or to be explicit, use Store.Migrate.
func Migrate(ctx context.Context, db any) error {
	var s *Store
	var err error
	switch x := db.(type) {
	case *pgxpool.Pool:
		s, err = NewPgxStore(x, StoreOptions{})
	case *sql.DB:
		s, err = NewSQLStore(x, dialectOf(x), StoreOptions{})
	default:
		return fmt.Errorf("outbox: migrate: db is a %T: want *pgxpool.Pool or *sql.DB: %w", db, pubsub.ErrInvalid)
	}
	if err != nil {
		return err
	}
	return s.Migrate(ctx)
}

func dialectOf(db *sql.DB) Dialect {
	t := reflect.TypeOf(db.Driver())
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && strings.Contains(strings.ToLower(t.PkgPath()), "sqlite") {
		return SQLite
	}
	return Postgres
}
