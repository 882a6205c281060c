// Package outbox is the transactional outbox: a service writes its events
// into a table inside the same database transaction as its business data,
// and a Relay forwards the committed rows to any pubsub broker. Either both
// the data and the event happen, or neither.
//
//	tx, _ := pool.Begin(ctx)
//	// ... business writes ...
//	outbox.Publish(ctx, tx, "orders.created", &pubsub.Message{Key: orderID, Payload: body})
//	tx.Commit(ctx)
//
//	store, _ := outbox.NewPgxStore(pool, outbox.StoreOptions{})
//	relay, _ := outbox.NewRelay(store, client, outbox.RelayOptions{})
//	relay.Run(ctx)
//
// # The table
//
// Migrate (or Store.Migrate) creates it; Store.DDL returns the statements.
// On PostgreSQL 13+ (DefaultTable shown; the name is configurable, validated
// and quoted):
//
//	CREATE TABLE IF NOT EXISTS "omnibus_outbox" (
//	    id         BIGSERIAL   PRIMARY KEY,                           -- insertion order
//	    txid       xid8        NOT NULL DEFAULT pg_current_xact_id(), -- writer's transaction
//	    topic      TEXT        NOT NULL,
//	    msg_id     TEXT        NOT NULL,                              -- pubsub.Message.ID
//	    msg_key    TEXT        NOT NULL DEFAULT '',                   -- pubsub.Message.Key
//	    payload    BYTEA       NOT NULL,
//	    metadata   JSONB,                                             -- NULL when empty
//	    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
//	);
//	CREATE INDEX IF NOT EXISTS "omnibus_outbox_txid_id" ON "omnibus_outbox" (txid, id);
//
// and its quarantine table, "omnibus_outbox_quarantine": the same columns
// (metadata as TEXT, no txid) plus reason and quarantined_at.
//
// On SQLite the same columns without txid: id INTEGER PRIMARY KEY
// AUTOINCREMENT, payload BLOB, metadata TEXT (JSON), created_at INTEGER
// (Unix microseconds).
//
// # Publishing
//
// Publish (default table, Postgres) and Store.Publish take the caller's
// transaction as a pgx.Tx or a *sql.Tx (the PgxTx and SQLTx interfaces).
// One call is one INSERT statement (chunks of 500 rows through
// database/sql); on Postgres the same statement runs
// pg_notify with the table name as channel and an empty payload, which
// PostgreSQL delivers to listening relays
// only when the transaction commits. A rolled-back transaction leaves no row
// and no notification. Empty message IDs are filled with pubsub.NewID in the
// caller's messages.
//
// # The commit-order gap, and the order promise
//
// A BIGSERIAL id is taken at INSERT time but becomes visible at COMMIT, so a
// lower id can commit after a higher one. A relay that reads "ORDER BY id"
// and remembers a position skips it for good; one that deletes what it sent
// does not lose it but can send it after a later row of the same key.
//
// Every row records its writer's transaction id (txid, an xid8). The relay
// reads only rows with txid < pg_snapshot_xmin(pg_current_snapshot()): rows
// whose transaction is older than every transaction still running. Such a
// row's transaction has ended, and any row that becomes visible later
// belongs to a transaction with txid at or above that horizon, so it sorts
// after everything read so far in (txid, id) order. The relay publishes in
// (txid, id) order, so the stream it sends is monotone in (txid, id), across
// batches, restarts and leader changes (first deliveries; a re-send after a
// crash repeats a prefix). Per key this means: rows of one transaction in
// the order written; rows of two transactions in the order the transactions
// took their xid (their first write) — in particular, when one commits
// before the other begins, in commit order. The test
// TestRelay_CommitOrderGapRowWaitsForTheOlderTransaction pins it: a committed
// row with a higher id waits while a lower-id transaction is open.
//
// The price: any long transaction that holds an xid, anywhere in the
// cluster, holds rows back until it ends (Lag shows it; the relay re-checks
// at short intervals while rows are held back). The alternative, a table
// lock per writer, serialises every writer of the outbox for the length of
// its transaction; we chose the horizon.
//
// SQLite runs one writer at a time, so ids are given out in commit order:
// the relay reads ORDER BY id.
//
// # Several relays
//
// Any number of relays may run on one table: the leader holds a
// session-level pg_try_advisory_lock (key: FNV-1a 64 of
// "omnibus/outbox:<table>") on its dedicated connection, and does all its
// reads and deletes on that connection. The others stand by and try the lock
// every PollInterval; when the leader's connection ends (crash, kill,
// network), PostgreSQL releases the lock and a standby takes over. Key
// partitions were rejected: handing a partition from one relay to another
// while the first may still be sending reorders that partition, and one
// relay already moves 50–100k rows/s.
//
// On SQLite, relays sharing one *sql.DB elect a leader in process; run one
// relay process per SQLite database.
//
// # Crashes, failures, lag
//
// A row is deleted only after client.Publish confirmed it. A relay killed
// at any point loses nothing: the next leader re-sends the rows that were
// published but not yet deleted (consumers deduplicate by Message.ID, e.g.
// with middleware.Dedup). A failed publish (or a partial one) keeps the rows
// and retries after an exponential backoff with full jitter
// (RelayOptions.RetryMin..RetryMax); a database error drops the session and
// reconnects. A row that can never be relayed (metadata that is not a JSON
// object of strings, an invalid topic or message ID, a message the client
// rejects with pubsub.ErrInvalid such as a payload over the broker's limit)
// is moved to the quarantine table (Store.QuarantineTable: the outbox's
// name plus QuarantineSuffix, created by Migrate) with the reason, and
// logged at Error; the rows behind it go on. A row refused with any other
// error is retried and logged: it is never skipped silently.
//
// Wake-ups: a LISTEN connection per relay (NOTIFY on commit); while it is
// down, or where there is none (SQLite), the relay polls every
// PollInterval, and a Publish in the same process wakes the relays of its
// table directly. Store.Lag and Relay.Lag report the backlog (rows waiting,
// age of the oldest); the leader logs it every LagLogInterval.
package outbox
