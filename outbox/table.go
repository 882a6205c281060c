package outbox

import (
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/omnibusmq/omnibus/pubsub"
)

// DefaultTable is the outbox table used when StoreOptions.Table is empty and
// by the package-level Publish and Migrate.
const DefaultTable = "omnibus_outbox"

// Dialect is the SQL dialect of a database/sql store.
type Dialect int

const (
	// Postgres: PostgreSQL 13 or later (pg_current_xact_id, xid8). Publish
	// signals relays with pg_notify in the writer's transaction.
	Postgres Dialect = iota + 1
	// SQLite: SQLite 3.35 or later through database/sql (modernc.org/sqlite,
	// driver name "sqlite", or any other SQLite driver). No NOTIFY: relays
	// poll, and are woken in process when Publish runs in the same process.
	SQLite
)

// String names the dialect.
func (d Dialect) String() string {
	switch d {
	case Postgres:
		return "postgres"
	case SQLite:
		return "sqlite"
	}
	return fmt.Sprintf("Dialect(%d)", int(d))
}

// table is a validated table name: an optional schema and a name, each
// [A-Za-z_][A-Za-z0-9_]*, at most 50 bytes each and 63 bytes in all.
type table struct {
	raw    string // as given: also the NOTIFY channel
	schema string // may be empty
	name   string
}

const maxPart = 50

func parseTable(s string) (table, error) {
	if s == "" {
		s = DefaultTable
	}
	bad := func(why string) (table, error) {
		return table{}, fmt.Errorf("outbox: StoreOptions.Table %q: %s: %w", s, why, pubsub.ErrInvalid)
	}
	if len(s) > 63 {
		return bad(fmt.Sprintf("is %d bytes, over 63 (it is also the NOTIFY channel name)", len(s)))
	}
	parts := strings.Split(s, ".")
	if len(parts) > 2 {
		return bad("want name or schema.name")
	}
	for _, p := range parts {
		if p == "" {
			return bad("empty schema or name part")
		}
		if len(p) > maxPart {
			return bad(fmt.Sprintf("part %q is %d bytes, over %d", p, len(p), maxPart))
		}
		for i, r := range p {
			letter := r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
			digit := r >= '0' && r <= '9'
			if !letter && !(digit && i > 0) {
				return bad(fmt.Sprintf("character %q at %d: want letters, digits and _ (not first)", r, i))
			}
		}
	}
	t := table{raw: s, name: parts[len(parts)-1]}
	if len(parts) == 2 {
		t.schema = parts[0]
	}
	return t, nil
}

// quoted returns the table as a quoted SQL identifier ("schema"."name").
// Validation allows no quote characters, so quoting is safe.
func (t table) quoted() string {
	if t.schema != "" {
		return `"` + t.schema + `"."` + t.name + `"`
	}
	return `"` + t.name + `"`
}

// quotedIndex returns the name of the (txid, id) index, unqualified (an
// index lives in its table's schema).
func (t table) quotedIndex() string { return `"` + t.name + `_txid_id"` }

// lockKey is the pg_advisory_lock key of the relays' leader lock: FNV-1a 64
// of "omnibus/outbox:" + the table name as configured.
func (t table) lockKey() int64 {
	h := fnv.New64a()
	h.Write([]byte("omnibus/outbox:" + t.raw))
	return int64(h.Sum64())
}

// QuarantineSuffix is appended to the outbox table's name to name its
// quarantine table: where the relay moves a row it cannot relay.
const QuarantineSuffix = "_quarantine"

// quarantined returns the quarantine table as a quoted SQL identifier.
func (t table) quarantined() string {
	q := t
	q.name += QuarantineSuffix
	return q.quoted()
}

// ddl returns the statements that create the outbox table and its index.
func ddl(d Dialect, t table) []string {
	q := t.quoted()
	switch d {
	case SQLite:
		return []string{`CREATE TABLE IF NOT EXISTS ` + q + ` (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order
    topic      TEXT    NOT NULL,
    msg_id     TEXT    NOT NULL,                   -- pubsub.Message.ID
    msg_key    TEXT    NOT NULL DEFAULT '',        -- pubsub.Message.Key
    payload    BLOB    NOT NULL,
    metadata   TEXT,                               -- JSON object, NULL when empty
    created_at INTEGER NOT NULL                    -- Unix microseconds
)`, `CREATE TABLE IF NOT EXISTS ` + t.quarantined() + ` (
    id             INTEGER PRIMARY KEY,            -- the row's id in the outbox
    topic          TEXT    NOT NULL,
    msg_id         TEXT    NOT NULL,
    msg_key        TEXT    NOT NULL,
    payload        BLOB    NOT NULL,
    metadata       TEXT,                           -- as it was, valid or not
    created_at     INTEGER NOT NULL,
    reason         TEXT    NOT NULL,               -- why the relay could not relay it
    quarantined_at INTEGER NOT NULL                -- Unix microseconds
)`}
	default:
		return []string{`CREATE TABLE IF NOT EXISTS ` + q + ` (
    id         BIGSERIAL   PRIMARY KEY,                          -- insertion order
    txid       xid8        NOT NULL DEFAULT pg_current_xact_id(), -- writer's transaction
    topic      TEXT        NOT NULL,
    msg_id     TEXT        NOT NULL,                             -- pubsub.Message.ID
    msg_key    TEXT        NOT NULL DEFAULT '',                  -- pubsub.Message.Key
    payload    BYTEA       NOT NULL,
    metadata   JSONB,                                            -- NULL when empty
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
)`,
			`CREATE INDEX IF NOT EXISTS ` + t.quotedIndex() + ` ON ` + q + ` (txid, id)`,
			`CREATE TABLE IF NOT EXISTS ` + t.quarantined() + ` (
    id             BIGINT      PRIMARY KEY,                      -- the row's id in the outbox
    topic          TEXT        NOT NULL,
    msg_id         TEXT        NOT NULL,
    msg_key        TEXT        NOT NULL,
    payload        BYTEA       NOT NULL,
    metadata       TEXT,                                         -- as it was, valid or not
    created_at     TIMESTAMPTZ NOT NULL,
    reason         TEXT        NOT NULL,                         -- why the relay could not relay it
    quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now()
)`,
		}
	}
}
