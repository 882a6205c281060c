// Package postgres is the adapter behind postgres:// and postgresql:// URLs:
// PostgreSQL as a persistent message broker, on jackc/pgx/v5 (pgxpool).
//
// # Design (see docs/adapters.md for the full page)
//
// Two tables, created on Open (Options.SkipMigrate turns that off; every
// name is quoted with pgx.Identifier):
//
//   - <prefix>queue: one row per (group, message). Publishing inserts, in one
//     statement, a copy of each message for every group the topic has when the
//     statement runs. A row is ready when visible_at <= now(); claiming it
//     (FOR UPDATE SKIP LOCKED) increments attempt and pushes visible_at to
//     now()+visibility_timeout; Ack deletes exactly the claimed rows (matched
//     on seq and attempt, so an ack can never remove another delivery of the
//     same or any other message); Nack sets visible_at to now()+delay.
//   - <prefix>groups: the groups known per topic. A group's first Subscribe
//     registers it; it receives every message published after that.
//
// Messages published to a topic that has no named group yet are kept (in
// the pseudo-group "", the backlog) and handed to the first named group that
// subscribes, so nothing published before the first consumer starts
// vanishes. A first group's registration, which adopts the backlog, and
// the publishes of a Broker that does not yet know the topic to have a
// named group serialise on a per-topic advisory lock (publishers share it),
// so no publish lands in a backlog that was just adopted. Once a Broker
// knows a named group exists (omnibus never deletes one), its publishes are
// a single INSERT without the lock; concurrent Publish calls are grouped
// into one send while a send is in flight.
//
// A subscription extends the visibility of the rows it holds every
// visibility_timeout/3 (heartbeat). When its process dies, or its database
// connection stays gone, the heartbeat stops and the rows become visible to
// the group's other members after at most visibility_timeout. Ack, nack,
// heartbeat and release lock the held rows in seq order, so they never
// deadlock each other; an ack or nack cancelled by a deadlock or
// serialization failure anyway is sent again (5 attempts), and an ack is
// sent again while the database is unreachable, up to visibility_timeout.
// After a claim failed (its answer may have been lost after the database
// ran it), the next claim first gives back every row the subscription
// holds but does not know.
//
// Order per key (key_ordering=true, the default): a keyed row is claimed
// only when every earlier row of its key still in the group is held by the
// claiming subscription itself (or claimed in the same statement); a row
// behind one that another member holds, or that a nack delays, waits. The
// subscription hands a key's claimed rows out one at a time, in seq order:
// the next one is parked in process until the one before is acked (then it
// is handed out at once) or nacked (then every parked row of the key is
// given back in the nack's own transaction, uncounted as an attempt, and
// waits behind the nacked message again). So a key has at most one message
// out per group, in a handler or in the portable prefetch buffer; a nacked
// message keeps its place, is redelivered first (after its delay) and
// blocks its key until it is acked; other keys go on meanwhile. That holds
// with any number of competing consumers and across crashes (a dead
// member's rows, parked ones included, come back in order after the
// visibility timeout). key_ordering=false lifts that and
// Capabilities.OrderingPerKey becomes false.
//
// Wake-ups: after a publish (or a nack, a keyed ack, a release) commits, the
// Broker wakes its own subscriptions of the topic and a notifier sends one
// NOTIFY on one channel (<prefix>queue, payload the topic) for every topic
// woken since its previous one; one LISTEN connection per Broker wakes the
// topic's subscriptions. Every subscription also polls every poll_interval,
// so a lost NOTIFY or listen connection only slows delivery down.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Schemes of this adapter: both spellings libpq accepts.
const (
	Scheme    = "postgres"
	SchemeAlt = "postgresql"
)

func init() {
	pubsub.Register(Scheme, openURL)
	pubsub.Register(SchemeAlt, openURL)
}

// Options configure a Broker. Zero values mean the documented defaults;
// New rejects bad values with an error wrapping driver.ErrInvalid that names
// the field.
type Options struct {
	// Schema holds the tables. Default "public". Created when missing
	// (unless SkipMigrate).
	Schema string
	// TablePrefix starts every table, index and the NOTIFY channel name.
	// Default "omnibus_". At most 40 bytes, no NUL.
	TablePrefix string
	// VisibilityTimeout is how long a claimed message stays invisible to the
	// group's other members without a heartbeat from its holder; a consumer
	// that dies has its messages redelivered after at most this long.
	// Default 30s; at least 100ms.
	VisibilityTimeout time.Duration
	// PollInterval is how often an idle subscription looks for ready
	// messages without a NOTIFY (delayed nacks of other members, expired
	// visibility, a lost listen connection). Default 1s; at least 10ms.
	PollInterval time.Duration
	// DisableKeyOrdering lets messages of one key be in flight concurrently
	// (higher throughput for hot keys) and makes
	// Capabilities.OrderingPerKey false. Default false: ordered per key.
	DisableKeyOrdering bool
	// MaxMessageSize is the largest payload accepted, in bytes. Default
	// 16 MiB; at most 512 MiB.
	MaxMessageSize int
	// SkipMigrate stops New from creating the schema, tables and indexes.
	// Default false: they are created (idempotently) on New.
	SkipMigrate bool
	// Logger receives background problems (lost listen connection, failed
	// heartbeats). Default slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.Schema == "" {
		o.Schema = "public"
	}
	if o.TablePrefix == "" {
		o.TablePrefix = "omnibus_"
	}
	if o.VisibilityTimeout == 0 {
		o.VisibilityTimeout = 30 * time.Second
	}
	if o.PollInterval == 0 {
		o.PollInterval = time.Second
	}
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = 16 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	bad := func(field string, v any, want string) error {
		return fmt.Errorf("postgres: Options.%s = %v: %s: %w", field, v, want, driver.ErrInvalid)
	}
	switch {
	case len(o.Schema) > 63 || strings.ContainsRune(o.Schema, 0) || !utf8.ValidString(o.Schema):
		return o, bad("Schema", fmt.Sprintf("%q", o.Schema), "want valid UTF-8 without NUL, at most 63 bytes")
	case len(o.TablePrefix) > 40 || strings.ContainsRune(o.TablePrefix, 0) || !utf8.ValidString(o.TablePrefix):
		return o, bad("TablePrefix", fmt.Sprintf("%q", o.TablePrefix), "want valid UTF-8 without NUL, at most 40 bytes")
	case o.VisibilityTimeout < 100*time.Millisecond:
		return o, bad("VisibilityTimeout", o.VisibilityTimeout, "want at least 100ms")
	case o.PollInterval < 10*time.Millisecond:
		return o, bad("PollInterval", o.PollInterval, "want at least 10ms")
	case o.MaxMessageSize < 0 || o.MaxMessageSize > 512<<20:
		return o, bad("MaxMessageSize", o.MaxMessageSize, "want 1 to 536870912 bytes")
	}
	return o, nil
}

// DefaultConnectTimeout bounds each connection attempt of a Broker opened
// from a URL (TCP connect, TLS and startup until the server is ready for
// queries) when the URL has no connect_timeout parameter. pgx's own default
// is no limit at all.
const DefaultConnectTimeout = 10 * time.Second

// pgxParams are the connection parameters passed through to pgx (libpq's
// names plus pgxpool's pool_*). Anything else in the URL that is not one of
// the adapter's own parameters is an error naming it.
var pgxParams = []string{
	"host", "port", "dbname", "user", "password", "passfile", "connect_timeout",
	"sslmode", "sslkey", "sslcert", "sslcertmode", "sslrootcert", "sslnegotiation", "sslpassword", "sslsni",
	"krbspn", "krbsrvname", "target_session_attrs", "service", "servicefile",
	"min_protocol_version", "max_protocol_version", "channel_binding", "require_auth",
	"application_name", "search_path", "options", "statement_timeout", "lock_timeout",
	"statement_cache_capacity", "description_cache_capacity", "default_query_exec_mode",
	"pool_max_conns", "pool_min_conns", "pool_min_idle_conns", "pool_max_conn_lifetime",
	"pool_max_conn_idle_time", "pool_health_check_period", "pool_max_conn_lifetime_jitter", "pool_ping_timeout",
}

func openURL(ctx context.Context, raw string) (driver.Broker, error) {
	u, err := driver.ParseURL("postgres", raw, pubsub.Redact(raw))
	if err != nil {
		return nil, err
	}
	q := u.Query()
	p := driver.NewParams(u.Scheme, q)
	opts := Options{
		Schema:             p.String("schema", ""),
		TablePrefix:        p.String("table_prefix", ""),
		VisibilityTimeout:  p.Duration("visibility_timeout", 0),
		PollInterval:       p.Duration("poll_interval", 0),
		DisableKeyOrdering: !p.Bool("key_ordering", true),
		MaxMessageSize:     p.Int("max_message_size", 0, 1, 512<<20),
		SkipMigrate:        !p.Bool("migrate", true),
	}
	pass := url.Values{}
	for _, name := range pgxParams {
		if p.Has(name) {
			pass[name] = q[name]
		}
		p.String(name, "")
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	u.RawQuery = pass.Encode()
	cfg, err := pgxpool.ParseConfig(u.String())
	if err != nil {
		return nil, fmt.Errorf("postgres: parse connection URL %s: %v: %w", pubsub.Redact(raw), pubsub.RedactError(err, raw), driver.ErrInvalid)
	}
	if !pass.Has("connect_timeout") {
		// Without it pgx waits for a silent server as long as ctx allows,
		// which for a background context is forever.
		cfg.ConnConfig.ConnectTimeout = DefaultConnectTimeout
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "omnibus"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect to %s: %w", pubsub.Redact(raw), pubsub.RedactError(err, raw))
	}
	b, err := New(ctx, pool, opts)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: open %s: %w", pubsub.Redact(raw), pubsub.RedactError(err, raw))
	}
	b.ownPool = true
	return b, nil
}

// Broker is Postgres as a message broker; it implements driver.Broker. Use
// pubsub.Open("postgres://...") or wrap one from New with pubsub.NewClient.
type Broker struct {
	pool    *pgxpool.Pool
	ownPool bool
	opts    Options
	log     *slog.Logger

	queue, groups string // quoted, schema-qualified table names
	idxPrefix     string // unquoted prefix for index names
	channel       string // NOTIFY channel (raw name)
	lockClass     int32  // first key of the per-topic advisory locks

	sqlPublish, sqlPublishNamed, sqlHasNamed, sqlClaim, sqlAck, sqlNack, sqlExtend, sqlRelease, sqlUnclaim, sqlRecover string

	lis *listener
	ntf *notifier

	// named holds the topics known to have a named group. omnibus never
	// deletes a named group, so an entry stays true; SendBatch drops it
	// when it finds the groups gone (deleted by hand).
	namedMu sync.Mutex
	named   map[string]bool

	mu     sync.Mutex
	closed bool
	subs   map[*subscription]struct{}
}

// New returns a Broker on an existing pool, creating its tables unless
// opts.SkipMigrate. The caller keeps ownership of pool: Close does not close
// it.
func New(ctx context.Context, pool *pgxpool.Pool, opts Options) (*Broker, error) {
	if pool == nil {
		return nil, fmt.Errorf("postgres: New: pool is nil: %w", driver.ErrInvalid)
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	b := &Broker{
		pool:      pool,
		opts:      opts,
		log:       opts.Logger,
		queue:     pgx.Identifier{opts.Schema, opts.TablePrefix + "queue"}.Sanitize(),
		groups:    pgx.Identifier{opts.Schema, opts.TablePrefix + "groups"}.Sanitize(),
		idxPrefix: opts.TablePrefix + "queue_",
		channel:   opts.TablePrefix + "queue",
		subs:      map[*subscription]struct{}{},
		named:     map[string]bool{},
	}
	h := fnv.New32a()
	h.Write([]byte(b.queue))
	b.lockClass = int32(h.Sum32())
	b.buildSQL()
	if !opts.SkipMigrate {
		if err := b.Migrate(ctx); err != nil {
			return nil, err
		}
	}
	b.lis = newListener(b)
	b.ntf = newNotifier(b)
	return b, nil
}

// Migrate creates the schema, tables and indexes if they do not exist. It is
// idempotent and safe to run from several processes at once (it holds an
// advisory lock). New calls it unless Options.SkipMigrate.
func (b *Broker) Migrate(ctx context.Context) error {
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("postgres: migrate: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, 0)`, b.lockClass); err != nil {
		return fmt.Errorf("postgres: migrate: lock: %w", err)
	}
	var stmts []string
	if b.opts.Schema != "public" {
		stmts = append(stmts, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{b.opts.Schema}.Sanitize())
	}
	stmts = append(stmts,
		`CREATE TABLE IF NOT EXISTS `+b.queue+` (
			seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
			topic        text        NOT NULL,
			grp          text        NOT NULL,
			msg_id       text        NOT NULL,
			key          text        NOT NULL,
			payload      bytea       NOT NULL,
			metadata     jsonb,
			published_at timestamptz NOT NULL,
			visible_at   timestamptz NOT NULL,
			attempt      integer     NOT NULL DEFAULT 0,
			holder       uuid
		) WITH (fillfactor = 70)`,
		`ALTER TABLE `+b.queue+` ADD COLUMN IF NOT EXISTS holder uuid`,
		`CREATE INDEX IF NOT EXISTS `+pgx.Identifier{b.idxPrefix + "claim"}.Sanitize()+` ON `+b.queue+` (topic, grp, seq)`,
		`CREATE INDEX IF NOT EXISTS `+pgx.Identifier{b.idxPrefix + "key"}.Sanitize()+` ON `+b.queue+` (topic, grp, key, seq) WHERE key <> ''`,
		`CREATE TABLE IF NOT EXISTS `+b.groups+` (
			topic      text        NOT NULL,
			grp        text        NOT NULL,
			anonymous  boolean     NOT NULL DEFAULT false,
			created_at timestamptz NOT NULL DEFAULT now(),
			expires_at timestamptz,
			PRIMARY KEY (topic, grp)
		)`,
	)
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("postgres: migrate: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres: migrate: commit: %w", err)
	}
	return nil
}

func (b *Broker) buildSQL() {
	q, g := b.queue, b.groups
	// One statement: a copy of every message for every live group of the
	// topic, or for the backlog ("") while the topic has no named group.
	// ORDER BY m.n makes seq follow the batch order (per-key order).
	insert := `INSERT INTO ` + q + ` (topic, grp, msg_id, key, payload, metadata, published_at, visible_at)
SELECT $1, g.grp, m.id, m.key, m.payload, m.meta::jsonb, now(), now()
FROM unnest($2::text[], $3::text[], $4::bytea[], $5::text[]) WITH ORDINALITY AS m(id, key, payload, meta, n)`
	b.sqlPublish = insert + `
CROSS JOIN (
	SELECT grp FROM ` + g + ` WHERE topic = $1 AND (NOT anonymous OR expires_at > now())
	UNION ALL
	SELECT '' WHERE NOT EXISTS (SELECT 1 FROM ` + g + ` WHERE topic = $1 AND NOT anonymous)
) AS g
ORDER BY m.n, g.grp`
	// Once a topic has a named group it never goes back to the backlog, so
	// no registration can adopt a backlog under a publish: no lock needed.
	// The groups are still read by the statement itself, so a group
	// registered (committed) before the statement began gets the message.
	// It inserts nothing if the named groups are gone (deleted by hand);
	// SendBatch then publishes again with sqlPublish.
	b.sqlPublishNamed = insert + `
CROSS JOIN (
	SELECT grp FROM ` + g + ` WHERE topic = $1 AND (NOT anonymous OR expires_at > now())
	  AND EXISTS (SELECT 1 FROM ` + g + ` WHERE topic = $1 AND NOT anonymous)
) AS g
ORDER BY m.n, g.grp`
	b.sqlHasNamed = `SELECT EXISTS (SELECT 1 FROM ` + g + ` WHERE topic = $1 AND NOT anonymous)`
	if b.opts.DisableKeyOrdering {
		b.sqlClaim = `WITH c AS (
	SELECT r.seq FROM ` + q + ` r
	WHERE r.topic = $1 AND r.grp = $2 AND r.visible_at <= now()
	ORDER BY r.seq
	LIMIT $3
	FOR UPDATE SKIP LOCKED
)
UPDATE ` + q + ` AS t SET attempt = t.attempt + 1, visible_at = now() + $4::bigint * interval '1 microsecond', holder = $5
FROM c WHERE t.seq = c.seq
RETURNING t.seq, t.attempt, t.msg_id, t.key, t.payload, t.metadata, t.published_at`
	} else {
		// A keyed row r is claimable by subscription $5 only when every
		// earlier row of its key is either held by $5 itself or claimed in
		// this same statement: c drops rows behind a row that another
		// member holds or that a nack delays; ok drops rows behind a ready
		// row this statement did not get (locked by a concurrent claim, or
		// past the LIMIT). The subscription hands a key's rows out one at a
		// time (see subscription.lanes), so the rows it holds behind a
		// key's first one are parked, not delivered.
		b.sqlClaim = `WITH c AS (
	SELECT r.seq, r.key FROM ` + q + ` r
	WHERE r.topic = $1 AND r.grp = $2 AND r.visible_at <= now()
	  AND (r.key = '' OR NOT EXISTS (
		SELECT 1 FROM ` + q + ` e
		WHERE e.topic = r.topic AND e.grp = r.grp AND e.key = r.key AND e.key <> '' AND e.seq < r.seq
		  AND e.visible_at > now() AND e.holder IS DISTINCT FROM $5))
	ORDER BY r.seq
	LIMIT $3
	FOR UPDATE SKIP LOCKED
), ok AS (
	SELECT c.seq FROM c
	WHERE c.key = '' OR NOT EXISTS (
		SELECT 1 FROM ` + q + ` e
		WHERE e.topic = $1 AND e.grp = $2 AND e.key = c.key AND e.key <> '' AND e.seq < c.seq
		  AND e.visible_at <= now() AND e.seq NOT IN (SELECT seq FROM c))
)
UPDATE ` + q + ` AS t SET attempt = t.attempt + 1, visible_at = now() + $4::bigint * interval '1 microsecond', holder = $5
FROM ok WHERE t.seq = ok.seq
RETURNING t.seq, t.attempt, t.msg_id, t.key, t.payload, t.metadata, t.published_at`
	}
	// Ack, nack, heartbeat and release write rows a subscription holds,
	// concurrently on different connections (the heartbeat runs while acks
	// arrive). They all lock those rows first, in seq order (the sort runs
	// before the row locks are taken), so no two of them can wait for each
	// other: without that PostgreSQL cancels one with a deadlock (40P01).
	// A row whose attempt changed (claimed again after its visibility
	// timeout) or that is gone is skipped.
	held := `WITH l AS MATERIALIZED (
	SELECT r.seq FROM ` + q + ` r JOIN unnest($1::bigint[], $2::integer[]) AS a(seq, attempt) ON r.seq = a.seq AND r.attempt = a.attempt
	ORDER BY r.seq
	FOR UPDATE OF r
) `
	b.sqlAck = held + `DELETE FROM ` + q + ` AS t USING l WHERE t.seq = l.seq`
	b.sqlNack = held + `UPDATE ` + q + ` AS t SET visible_at = now() + $3::bigint * interval '1 microsecond', holder = NULL FROM l WHERE t.seq = l.seq`
	b.sqlExtend = held + `UPDATE ` + q + ` AS t SET visible_at = now() + $3::bigint * interval '1 microsecond' FROM l WHERE t.seq = l.seq`
	b.sqlRelease = held + `UPDATE ` + q + ` AS t SET visible_at = now(), holder = NULL FROM l WHERE t.seq = l.seq`
	// Unclaim gives back parked claims, never delivered: their claim did
	// not count as an attempt.
	b.sqlUnclaim = held + `UPDATE ` + q + ` AS t SET visible_at = now(), holder = NULL, attempt = t.attempt - 1 FROM l WHERE t.seq = l.seq`
	// Recover gives back every row of (topic $1, group $2) that holder $3
	// holds but does not know ($4: the seqs it knows), locked in seq order
	// like the statements above: the rows of a claim whose answer was
	// lost. Their claim counts as an attempt, as a crashed member's does.
	b.sqlRecover = `WITH l AS MATERIALIZED (
	SELECT r.seq FROM ` + q + ` r
	WHERE r.topic = $1 AND r.grp = $2 AND r.holder = $3 AND r.seq <> ALL($4::bigint[])
	ORDER BY r.seq
	FOR UPDATE OF r
) UPDATE ` + q + ` AS t SET visible_at = now(), holder = NULL FROM l WHERE t.seq = l.seq`
}

// Capabilities implements driver.Broker.
func (b *Broker) Capabilities() driver.Capabilities {
	return driver.Capabilities{
		OrderingPerKey: !b.opts.DisableKeyOrdering,
		Persistence:    true,
		NackDelay:      true,
		Replay:         false,
		Groups:         true,
		AttemptCount:   true,
		MaxMessageSize: b.opts.MaxMessageSize,
		Broker:         "postgres",
		TopicNames:     nameRule,
		GroupNames:     nameRule,
	}
}

// nameRule bounds topic and group names so that an index entry on (topic,
// group) stays within a B-tree page's limit (about 2.7 kB) and a topic fits
// a NOTIFY payload.
var nameRule = driver.NameRule{MaxBytes: 1024}

// Traits implements driver.Broker: one INSERT carries up to 1000 messages,
// four run concurrently per topic; a publish costs a statement and a commit
// whatever its size, so concurrent Publish calls to a topic wait for the
// send in flight and go out together (group commit); an ack is local
// bookkeeping that a flusher sends (InlineAcks, see SendAcks).
func (b *Broker) Traits() driver.Traits {
	return driver.Traits{MaxSendBatch: 1000, MaxConcurrentSends: 4, GroupSends: true, InlineAcks: true}
}

func (b *Broker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

func validText(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// SendBatch implements driver.Broker. On a topic known to have a named
// group it is one INSERT of every message for every group. Otherwise one
// implicit transaction (a pgx batch) takes the topic's shared advisory lock
// (a first named group's registration, which adopts the backlog, takes it
// exclusively), inserts every message for every group or for the backlog,
// and learns whether the topic has a named group now. Subscribers are
// woken after the commit (see wake).
func (b *Broker) SendBatch(ctx context.Context, topic string, msgs []*driver.Message) error {
	if b.isClosed() {
		return fmt.Errorf("postgres: publish to %q: %w", topic, driver.ErrClosed)
	}
	ids := make([]string, len(msgs))
	keys := make([]string, len(msgs))
	payloads := make([][]byte, len(msgs))
	metas := make([]*string, len(msgs))
	for i, m := range msgs {
		if !validText(m.ID) {
			return fmt.Errorf("postgres: publish to %q: message %d: ID %q is not valid UTF-8 or contains NUL: %w", topic, i, m.ID, driver.ErrInvalid)
		}
		if !validText(m.Key) {
			return fmt.Errorf("postgres: publish to %q: message %d (id %q): Key %q is not valid UTF-8 or contains NUL: %w", topic, i, m.ID, m.Key, driver.ErrInvalid)
		}
		ids[i], keys[i] = m.ID, m.Key
		payloads[i] = m.Payload
		if payloads[i] == nil {
			payloads[i] = []byte{}
		}
		if m.Metadata != nil {
			js, err := encodeMeta(m.Metadata)
			if err != nil {
				return fmt.Errorf("postgres: publish to %q: message %d (id %q): %w", topic, i, m.ID, err)
			}
			metas[i] = &js
		}
	}
	if b.hasNamed(topic) {
		tag, err := b.pool.Exec(ctx, b.sqlPublishNamed, topic, ids, keys, payloads, metas)
		if err != nil {
			return fmt.Errorf("postgres: publish %d message(s) to %q (first id %q): %w", len(msgs), topic, ids[0], err)
		}
		if tag.RowsAffected() > 0 {
			b.wake(topic)
			return nil
		}
		// The topic's named groups were deleted by hand: nothing was
		// inserted; publish again the careful way.
		b.setNamed(topic, false)
	}
	batch := &pgx.Batch{}
	batch.Queue(`SELECT pg_advisory_xact_lock_shared($1, hashtext($2))`, b.lockClass, topic)
	batch.Queue(b.sqlPublish, topic, ids, keys, payloads, metas)
	var named bool
	batch.Queue(b.sqlHasNamed, topic).QueryRow(func(row pgx.Row) error { return row.Scan(&named) })
	if err := b.pool.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("postgres: publish %d message(s) to %q (first id %q): %w", len(msgs), topic, ids[0], err)
	}
	if named {
		b.setNamed(topic, true)
	}
	b.wake(topic)
	return nil
}

func (b *Broker) hasNamed(topic string) bool {
	b.namedMu.Lock()
	defer b.namedMu.Unlock()
	return b.named[topic]
}

func (b *Broker) setNamed(topic string, named bool) {
	b.namedMu.Lock()
	defer b.namedMu.Unlock()
	if named {
		b.named[topic] = true
	} else {
		delete(b.named, topic)
	}
}

// wake wakes the topic's subscriptions after a commit made messages
// claimable (a publish, a nack, an ack of a keyed message, a release):
// this Broker's at once, those of other processes through a NOTIFY that the
// notifier sends, for every topic woken since its last one (a NOTIFY in each
// transaction would serialise those commits on PostgreSQL's notification
// queue lock).
func (b *Broker) wake(topic string) {
	b.lis.wakeTopic(topic)
	b.ntf.add(topic)
}

// OpenSubscription implements driver.Broker. A named group's first
// subscription registers it (adopting the topic's backlog if it is the
// first named group); an anonymous subscription registers a private group
// that is deleted, with its rows, on Close (or expires after 3 visibility
// timeouts without a heartbeat when its process died).
func (b *Broker) OpenSubscription(ctx context.Context, topic string, opts driver.SubscriptionOptions) (driver.Subscription, error) {
	if b.isClosed() {
		return nil, fmt.Errorf("postgres: subscribe to %q: %w", topic, driver.ErrClosed)
	}
	if opts.StartFromOldest {
		return nil, fmt.Errorf("postgres: subscribe to %q: FromOldest: a new group starts with the messages published after it registered (or the topic's backlog): %w", topic, driver.ErrUnsupported)
	}
	s := newSubscription(b, topic, opts.Group)
	if err := s.register(ctx); err != nil {
		return nil, err
	}
	if !s.anon {
		b.setNamed(topic, true)
	}
	s.start() // before anything can Close it: Close waits for its goroutines
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		_ = s.Close()
		return nil, fmt.Errorf("postgres: subscribe to %q: %w", topic, driver.ErrClosed)
	}
	b.subs[s] = struct{}{}
	b.mu.Unlock()
	b.lis.add(s)
	return s, nil
}

func (b *Broker) forget(s *subscription) {
	b.mu.Lock()
	delete(b.subs, s)
	b.mu.Unlock()
	b.lis.remove(s)
}

// Close implements driver.Broker: it closes any subscription still open,
// stops the listen connection and closes the pool if Open created it.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	subs := make([]*subscription, 0, len(b.subs))
	for s := range b.subs {
		subs = append(subs, s)
	}
	b.mu.Unlock()
	var errs []error
	for _, s := range subs {
		if err := s.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	b.ntf.stop()
	b.lis.stop()
	if b.ownPool {
		b.pool.Close()
	}
	return errors.Join(errs...)
}

// Pool returns the connection pool the broker uses.
func (b *Broker) Pool() *pgxpool.Pool { return b.pool }

// QueueTable returns the quoted, schema-qualified name of the queue table
// (one row per group and message), for operators' queries.
func (b *Broker) QueueTable() string { return b.queue }

// GroupsTable returns the quoted, schema-qualified name of the groups table.
func (b *Broker) GroupsTable() string { return b.groups }

// As exposes the connection pool for pubsub.Client.As: a **pgxpool.Pool
// gets the pool the adapter publishes and consumes through.
func (b *Broker) As(target any) bool {
	if t, ok := target.(**pgxpool.Pool); ok {
		*t = b.pool
		return true
	}
	return false
}

// Open connects to the broker at url and returns a portable client: the
// same as pubsub.Open with this adapter's scheme (postgres://, postgresql://); a URL of
// another scheme is an error wrapping pubsub.ErrInvalid.
func Open(ctx context.Context, url string) (*pubsub.Client, error) {
	return pubsub.OpenScheme(ctx, url, Scheme, SchemeAlt)
}
