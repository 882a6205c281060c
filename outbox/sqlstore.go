package outbox

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

var driverBadConn = driver.ErrBadConn

type sqlBackend struct {
	db *sql.DB
	d  Dialect
	t  table
	pg pgQueries // Postgres only
}

func (b *sqlBackend) migrate(ctx context.Context) error {
	tx, err := b.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	if b.d == Postgres {
		if _, err := tx.ExecContext(ctx, b.pg.migrateLock, b.pg.migrateKey); err != nil {
			return err
		}
	}
	for _, stmt := range ddl(b.d, b.t) {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return err
		}
	}
	return tx.Commit()
}

func (b *sqlBackend) lag(ctx context.Context) (Lag, error) {
	var l Lag
	if b.d == Postgres {
		var oldest sql.NullTime
		var age float64
		if err := b.db.QueryRowContext(ctx, b.pg.lag).Scan(&l.Rows, &oldest, &age); err != nil {
			return Lag{}, err
		}
		if oldest.Valid {
			l.Oldest, l.Age = oldest.Time, time.Duration(age*float64(time.Second))
		}
		return l, nil
	}
	var oldest sql.NullInt64
	if err := b.db.QueryRowContext(ctx, `SELECT count(*), min(created_at) FROM `+b.t.quoted()).Scan(&l.Rows, &oldest); err != nil {
		return Lag{}, err
	}
	if oldest.Valid {
		l.Oldest = time.UnixMicro(oldest.Int64)
		l.Age = max(0, time.Since(l.Oldest))
	}
	return l, nil
}

func (b *sqlBackend) session(ctx context.Context) (session, error) {
	c, err := b.db.Conn(ctx)
	if err != nil {
		return nil, err
	}
	return &sqlSession{c: c, b: b}, nil
}

func (b *sqlBackend) listener() func(ctx context.Context, wake func()) error {
	if b.d != Postgres {
		return nil
	}
	return sqlListener(b.db, b.pg.listen)
}

// SQLite has no advisory locks: relays on one *sql.DB and table elect their
// leader with a process-local lock.
var sqliteLeaders = struct {
	sync.Mutex
	held map[string]bool
}{held: map[string]bool{}}

type sqlSession struct {
	c       *sql.Conn
	b       *sqlBackend
	leadKey string // SQLite: the process-local lock this session holds
}

func (s *sqlSession) tryLead(ctx context.Context) (bool, error) {
	if s.b.d == Postgres {
		var ok bool
		err := s.c.QueryRowContext(ctx, s.b.pg.lock, s.b.t.lockKey()).Scan(&ok)
		return ok, err
	}
	if s.leadKey != "" {
		return true, nil
	}
	k := fmt.Sprintf("%p/%s", s.b.db, s.b.t.raw)
	sqliteLeaders.Lock()
	defer sqliteLeaders.Unlock()
	if sqliteLeaders.held[k] {
		return false, nil
	}
	sqliteLeaders.held[k] = true
	s.leadKey = k
	return true, nil
}

func (s *sqlSession) fetch(ctx context.Context, n int) ([]row, bool, error) {
	var q string
	if s.b.d == Postgres {
		q = s.b.pg.fetch
	} else {
		// SQLite runs one writer at a time, so ids are handed out in
		// commit order: there is no commit-order gap.
		q = `SELECT id, topic, msg_id, msg_key, payload, metadata FROM ` + s.b.t.quoted() + ` ORDER BY id LIMIT ?`
	}
	rs, err := s.c.QueryContext(ctx, q, n)
	if err != nil {
		return nil, false, err
	}
	defer rs.Close()
	out, err := readRows(rs)
	if err != nil {
		return nil, false, err
	}
	rs.Close()
	var held bool
	if s.b.d == Postgres && len(out) < n {
		if err := s.c.QueryRowContext(ctx, s.b.pg.held).Scan(&held); err != nil {
			return nil, false, err
		}
	}
	return out, held, nil
}

func (s *sqlSession) remove(ctx context.Context, ids []int64) error {
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), rowsPerInsert)]
		ids = ids[len(chunk):]
		var sb strings.Builder
		sb.WriteString(`DELETE FROM ` + s.b.t.quoted() + ` WHERE id IN (`)
		args := make([]any, len(chunk))
		for i, id := range chunk {
			if i > 0 {
				sb.WriteByte(',')
			}
			if s.b.d == Postgres {
				sb.WriteString("$" + strconv.Itoa(i+1))
			} else {
				sb.WriteByte('?')
			}
			args[i] = id
		}
		sb.WriteByte(')')
		if _, err := s.c.ExecContext(ctx, sb.String(), args...); err != nil {
			return err
		}
	}
	return nil
}

func (s *sqlSession) quarantine(ctx context.Context, id int64, reason string) error {
	if s.b.d == Postgres {
		_, err := s.c.ExecContext(ctx, s.b.pg.quarantine, id, reason)
		return err
	}
	tx, err := s.c.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	t := s.b.t.quoted()
	if _, err := tx.ExecContext(ctx, `INSERT INTO `+s.b.t.quarantined()+`
(id, topic, msg_id, msg_key, payload, metadata, created_at, reason, quarantined_at)
SELECT id, topic, msg_id, msg_key, payload, metadata, created_at, ?, ? FROM `+t+` WHERE id = ?`,
		reason, time.Now().UnixMicro(), id); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM `+t+` WHERE id = ?`, id); err != nil {
		return err
	}
	return tx.Commit()
}

func (s *sqlSession) close() {
	if s.leadKey != "" {
		sqliteLeaders.Lock()
		delete(sqliteLeaders.held, s.leadKey)
		sqliteLeaders.Unlock()
		s.leadKey = ""
	}
	if s.b.d == Postgres {
		// The session's advisory lock must not outlive the relay: a pooled
		// connection would keep it. Discard the connection.
		_ = s.c.Raw(func(any) error { return driverBadConn })
	}
	_ = s.c.Close()
}
