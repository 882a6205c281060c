package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgQueries are the relay's Postgres statements for one table.
type pgQueries struct {
	lock, fetch, held, remove, quarantine, lag, listen, migrateLock string
	migrateKey                                                      int64
}

func newPgQueries(t table) pgQueries {
	q := t.quoted()
	h := fnv.New64a()
	h.Write([]byte("omnibus/outbox-migrate:" + t.raw))
	return pgQueries{
		lock: `SELECT pg_try_advisory_lock($1)`,
		// Only rows whose writing transaction is older than every
		// transaction still running: no row can later appear before them
		// in (txid, id) order. See "The commit-order gap" in the package doc.
		fetch: `SELECT id, topic, msg_id, msg_key, payload, metadata::text FROM ` + q + `
WHERE txid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY txid, id LIMIT $1`,
		held:   `SELECT EXISTS (SELECT 1 FROM ` + q + ` WHERE txid >= pg_snapshot_xmin(pg_current_snapshot()))`,
		remove: `DELETE FROM ` + q + ` WHERE id = ANY($1)`,
		quarantine: `WITH moved AS (DELETE FROM ` + q + ` WHERE id = $1
    RETURNING id, topic, msg_id, msg_key, payload, metadata::text AS metadata, created_at)
INSERT INTO ` + t.quarantined() + ` (id, topic, msg_id, msg_key, payload, metadata, created_at, reason)
SELECT id, topic, msg_id, msg_key, payload, metadata, created_at, $2 FROM moved`,
		lag:         `SELECT count(*), min(created_at), COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at)), 0)::float8 FROM ` + q,
		listen:      `LISTEN "` + t.raw + `"`,
		migrateLock: `SELECT pg_advisory_xact_lock($1)`,
		migrateKey:  int64(h.Sum64()),
	}
}

type pgxBackend struct {
	pool *pgxpool.Pool
	t    table
	q    pgQueries
}

func (b *pgxBackend) migrate(ctx context.Context) error {
	return pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, b.q.migrateLock, b.q.migrateKey); err != nil {
			return err
		}
		for _, stmt := range ddl(Postgres, b.t) {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return err
			}
		}
		return nil
	})
}

func (b *pgxBackend) lag(ctx context.Context) (Lag, error) {
	var l Lag
	var oldest *time.Time
	var age float64
	if err := b.pool.QueryRow(ctx, b.q.lag).Scan(&l.Rows, &oldest, &age); err != nil {
		return Lag{}, err
	}
	if oldest != nil {
		l.Oldest = *oldest
		l.Age = time.Duration(age * float64(time.Second))
	}
	return l, nil
}

func (b *pgxBackend) connect(ctx context.Context) (*pgx.Conn, error) {
	return pgx.ConnectConfig(ctx, b.pool.Config().ConnConfig.Copy())
}

func (b *pgxBackend) session(ctx context.Context) (session, error) {
	c, err := b.connect(ctx)
	if err != nil {
		return nil, err
	}
	return &pgxSession{c: c, b: b}, nil
}

func (b *pgxBackend) listener() func(ctx context.Context, wake func()) error {
	return func(ctx context.Context, wake func()) error {
		c, err := b.connect(ctx)
		if err != nil {
			return err
		}
		defer closeQuietly(c)
		return listenLoop(ctx, c, b.q.listen, wake)
	}
}

// listenLoop LISTENs on c and calls wake once listening and on every
// notification, until ctx ends (nil) or c fails.
func listenLoop(ctx context.Context, c *pgx.Conn, listenSQL string, wake func()) error {
	if _, err := c.Exec(ctx, listenSQL); err != nil {
		return err
	}
	wake() // rows committed while nobody listened
	for {
		if _, err := c.WaitForNotification(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wake()
	}
}

func closeQuietly(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

type pgxSession struct {
	c *pgx.Conn
	b *pgxBackend
}

func (s *pgxSession) tryLead(ctx context.Context) (bool, error) {
	var ok bool
	err := s.c.QueryRow(ctx, s.b.q.lock, s.b.t.lockKey()).Scan(&ok)
	return ok, err
}

func (s *pgxSession) fetch(ctx context.Context, n int) ([]row, bool, error) {
	batch := &pgx.Batch{}
	batch.Queue(s.b.q.fetch, n)
	batch.Queue(s.b.q.held)
	br := s.c.SendBatch(ctx, batch)
	rows, err := scanRows(br.Query())
	if err != nil {
		_ = br.Close()
		return nil, false, err
	}
	var held bool
	if err := br.QueryRow().Scan(&held); err != nil {
		_ = br.Close()
		return nil, false, err
	}
	return rows, held, br.Close()
}

func scanRows(rs pgx.Rows, err error) ([]row, error) {
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	return readRows(rs)
}

func (s *pgxSession) remove(ctx context.Context, ids []int64) error {
	_, err := s.c.Exec(ctx, s.b.q.remove, ids)
	return err
}

func (s *pgxSession) quarantine(ctx context.Context, id int64, reason string) error {
	_, err := s.c.Exec(ctx, s.b.q.quarantine, id, reason)
	return err
}

func (s *pgxSession) close() { closeQuietly(s.c) }

// pgxConner is implemented by the pgx stdlib driver's connection
// (*stdlib.Conn), which lets a database/sql store LISTEN.
type pgxConner interface{ Conn() *pgx.Conn }

// sqlListener LISTENs through a dedicated *sql.Conn when its driver is pgx
// stdlib; it reports ok=false otherwise.
func sqlListener(db *sql.DB, listenSQL string) func(ctx context.Context, wake func()) error {
	return func(ctx context.Context, wake func()) error {
		c, err := db.Conn(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		var supported bool
		err = c.Raw(func(dc any) error {
			pc, ok := dc.(pgxConner)
			if !ok {
				return nil
			}
			supported = true
			return listenLoop(ctx, pc.Conn(), listenSQL, wake)
		})
		if !supported {
			return errNoListen
		}
		if err != nil {
			// The pgx connection may be broken: make database/sql drop it.
			_ = c.Raw(func(any) error { return driverBadConn })
		}
		return err
	}
}

var errNoListen = fmt.Errorf("the database/sql driver is not pgx stdlib: no LISTEN, polling only")
