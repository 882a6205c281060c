package outbox

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/omnibusmq/omnibus/pubsub"
)

// PgxTx is what Publish needs from a pgx transaction: pgx.Tx has it (so do
// *pgx.Conn and *pgxpool.Conn, but then the rows are not part of any
// transaction of yours).
type PgxTx interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// SQLTx is what Publish needs from a database/sql transaction: *sql.Tx has
// it (so do *sql.Conn and *sql.DB, outside any transaction of yours).
type SQLTx interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Publish writes msgs for topic into the default outbox table
// (DefaultTable) of a PostgreSQL database, inside the caller's transaction
// tx, which must be a PgxTx (pgx.Tx) or an SQLTx (*sql.Tx). It is
// Store.Publish of a Postgres store on DefaultTable; for another table or
// for SQLite, use Store.Publish.
//
// The rows become visible to the relay when tx commits, and not at all if
// it rolls back. Messages with an empty ID get a new pubsub.NewID, written
// back into the caller's message. Messages of one call, and of successive
// calls in one transaction, are delivered in the order written (per key;
// see the package documentation for the order across transactions). Publish
// also queues pg_notify on the table's channel in tx, which PostgreSQL
// delivers to listening relays only if tx commits.
func Publish(ctx context.Context, tx any, topic string, msgs ...*pubsub.Message) error {
	return defaultWriter.publish(ctx, tx, topic, msgs)
}

var defaultWriter = newWriter(Postgres, table{raw: DefaultTable, name: DefaultTable})

// writer builds and runs the INSERT statements of one (dialect, table).
type writer struct {
	d       Dialect
	t       table
	pgxSQL  string // Postgres through pgx: unnest arrays, one statement
	sqlHead string // database/sql: multi-row VALUES
}

// rowsPerInsert bounds one database/sql INSERT (6 parameters a row).
const rowsPerInsert = 500

func newWriter(d Dialect, t table) *writer {
	w := &writer{d: d, t: t}
	q := t.quoted()
	w.pgxSQL = `WITH ins AS (
    INSERT INTO ` + q + ` (topic, msg_id, msg_key, payload, metadata)
    SELECT $2, u.id, u.k, u.p, u.m::jsonb
    FROM unnest($3::text[], $4::text[], $5::bytea[], $6::text[]) WITH ORDINALITY AS u(id, k, p, m, ord)
    ORDER BY u.ord
    RETURNING 1)
SELECT pg_notify($1, '')`
	if d == SQLite {
		w.sqlHead = `INSERT INTO ` + q + ` (topic, msg_id, msg_key, payload, metadata, created_at) VALUES `
	} else {
		w.sqlHead = `WITH ins AS (INSERT INTO ` + q + ` (topic, msg_id, msg_key, payload, metadata) VALUES `
	}
	return w
}

func (w *writer) publish(ctx context.Context, tx any, topic string, msgs []*pubsub.Message) error {
	if err := pubsub.ValidateTopic(topic); err != nil {
		return fmt.Errorf("outbox: publish: %w", err)
	}
	if tx == nil {
		return fmt.Errorf("outbox: publish to %q: tx is nil: want a pgx.Tx or *sql.Tx: %w", topic, pubsub.ErrInvalid)
	}
	if len(msgs) == 0 {
		return nil
	}
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("outbox: publish to %q: message %d of %d is nil: %w", topic, i, len(msgs), pubsub.ErrInvalid)
		}
	}
	for _, m := range msgs {
		if m.ID == "" {
			m.ID = pubsub.NewID()
		}
	}
	var err error
	switch x := tx.(type) {
	case PgxTx:
		if w.d != Postgres {
			return fmt.Errorf("outbox: publish to %q: tx is a pgx transaction (%T) but the store's dialect is %s: %w", topic, tx, w.d, pubsub.ErrInvalid)
		}
		err = w.publishPgx(ctx, x, topic, msgs)
	case SQLTx:
		err = w.publishSQL(ctx, x, topic, msgs)
	default:
		return fmt.Errorf("outbox: publish to %q: tx is a %T: want a pgx.Tx or *sql.Tx: %w", topic, tx, pubsub.ErrInvalid)
	}
	if err != nil {
		return fmt.Errorf("outbox: publish %d message(s) to %q into table %s: %w", len(msgs), topic, w.t.raw, err)
	}
	wakeLocal(w.d, w.t.raw)
	return nil
}

func encodeMeta(m map[string]string) (*string, error) {
	if len(m) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	s := string(b)
	return &s, nil
}

func payloadOf(m *pubsub.Message) []byte {
	if m.Payload == nil {
		return []byte{}
	}
	return m.Payload
}

func (w *writer) publishPgx(ctx context.Context, tx PgxTx, topic string, msgs []*pubsub.Message) error {
	ids := make([]string, len(msgs))
	keys := make([]string, len(msgs))
	payloads := make([][]byte, len(msgs))
	metas := make([]*string, len(msgs))
	for i, m := range msgs {
		ids[i], keys[i], payloads[i] = m.ID, m.Key, payloadOf(m)
		meta, err := encodeMeta(m.Metadata)
		if err != nil {
			return fmt.Errorf("message %q: metadata: %w", m.ID, err)
		}
		metas[i] = meta
	}
	_, err := tx.Exec(ctx, w.pgxSQL, w.t.raw, topic, ids, keys, payloads, metas)
	return err
}

func (w *writer) publishSQL(ctx context.Context, tx SQLTx, topic string, msgs []*pubsub.Message) error {
	now := time.Now().UnixMicro()
	for len(msgs) > 0 {
		chunk := msgs[:min(len(msgs), rowsPerInsert)]
		msgs = msgs[len(chunk):]
		var sb strings.Builder
		sb.WriteString(w.sqlHead)
		args := make([]any, 0, 1+6*len(chunk))
		if w.d == Postgres {
			args = append(args, w.t.raw) // $1: the NOTIFY channel
		}
		for i, m := range chunk {
			meta, err := encodeMeta(m.Metadata)
			if err != nil {
				return fmt.Errorf("message %q: metadata: %w", m.ID, err)
			}
			if i > 0 {
				sb.WriteByte(',')
			}
			if w.d == SQLite {
				sb.WriteString("(?,?,?,?,?,?)")
				args = append(args, topic, m.ID, m.Key, payloadOf(m), meta, now)
				continue
			}
			n := len(args)
			sb.WriteString("($" + strconv.Itoa(n+1) + ",$" + strconv.Itoa(n+2) + ",$" + strconv.Itoa(n+3) +
				",$" + strconv.Itoa(n+4) + ",CAST($" + strconv.Itoa(n+5) + " AS jsonb))")
			args = append(args, topic, m.ID, m.Key, payloadOf(m), meta)
		}
		if w.d == Postgres {
			sb.WriteString(` RETURNING 1) SELECT pg_notify($1, '')`)
		}
		if _, err := tx.ExecContext(ctx, sb.String(), args...); err != nil {
			return err
		}
	}
	return nil
}

// In-process wake-ups: a Publish in this process pokes the relays of the
// same (dialect, table) in this process. That is the only signal on SQLite;
// on Postgres it only complements NOTIFY.
var local = struct {
	sync.Mutex
	m map[string]map[chan struct{}]struct{}
}{m: map[string]map[chan struct{}]struct{}{}}

func localKey(d Dialect, t string) string { return d.String() + ":" + t }

func subscribeLocal(d Dialect, t string, ch chan struct{}) (cancel func()) {
	k := localKey(d, t)
	local.Lock()
	if local.m[k] == nil {
		local.m[k] = map[chan struct{}]struct{}{}
	}
	local.m[k][ch] = struct{}{}
	local.Unlock()
	return func() {
		local.Lock()
		delete(local.m[k], ch)
		if len(local.m[k]) == 0 {
			delete(local.m, k)
		}
		local.Unlock()
	}
}

// wakeLocalHook, when set (tests only), filters in-process wake-ups.
var wakeLocalHook atomic.Pointer[func(d Dialect, table string) bool]

func wakeLocal(d Dialect, t string) {
	if h := wakeLocalHook.Load(); h != nil && !(*h)(d, t) {
		return
	}
	k := localKey(d, t)
	local.Lock()
	for ch := range local.m[k] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	local.Unlock()
}
