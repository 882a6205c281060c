package outbox

import (
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// permanentSQLStates are the PostgreSQL errors no retry can fix without an
// operator: the table or a column is missing, the password or the role is
// refused, the database does not exist, a privilege is missing.
var permanentSQLStates = map[string]string{
	"42P01": "the table does not exist (create it: Store.Migrate, or omnibus relay --migrate)",
	"42703": "a column is missing (the table is not an omnibus outbox table)",
	"28P01": "authentication failed",
	"28000": "the role may not connect",
	"3D000": "the database does not exist",
	"42501": "permission denied",
}

// permanentDBError returns what is wrong for good when err is a database
// error that retrying cannot fix, or "".
func permanentDBError(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return permanentSQLStates[pe.Code]
	}
	s := err.Error()
	switch {
	case strings.Contains(s, "no such table"):
		return permanentSQLStates["42P01"]
	case strings.Contains(s, "no such column"):
		return permanentSQLStates["42703"]
	}
	return ""
}

// failureLog logs a repeating failure once when it starts and then at most
// once per interval (with how many attempts failed meanwhile), instead of
// once per retry.
type failureLog struct {
	log      *slog.Logger
	interval time.Duration

	mu       sync.Mutex
	since    time.Time // zero while things work
	last     time.Time
	attempts int
}

// failed records one failed attempt and logs it when due.
func (f *failureLog) failed(msg string, err error, backoff time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	f.attempts++
	switch {
	case f.since.IsZero():
		f.since, f.last, f.attempts = now, now, 1
		f.log.Warn(msg+"; retrying with backoff (logged again every "+f.interval.String()+" while it lasts)",
			"error", err, "backoff", backoff)
	case now.Sub(f.last) >= f.interval:
		f.last = now
		f.log.Warn(msg+"; still retrying", "error", err, "attempts", f.attempts, "failing_for", now.Sub(f.since).Round(time.Second))
	}
}

// ok records a success; it logs the recovery after a failure.
func (f *failureLog) ok() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.since.IsZero() {
		return
	}
	f.log.Info("outbox relay: recovered", "attempts", f.attempts, "failed_for", time.Since(f.since).Round(time.Millisecond))
	f.since, f.attempts = time.Time{}, 0
}
