package outbox

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// A relay the database refuses for good stops with an error that says why,
// instead of retrying forever.
func TestRelay_StopsOnPermanentDatabaseErrors(t *testing.T) {
	cases := []struct {
		name    string
		store   func(t *testing.T) *Store
		mention string
	}{
		{"missing table, pgx", func(t *testing.T) *Store {
			s, err := NewPgxStore(pgPool(t), StoreOptions{Table: uniqueTable("nomigrate")})
			must(t, err)
			return s
		}, "does not exist"},
		{"missing table, sqlite", func(t *testing.T) *Store {
			s, err := NewSQLStore(sqliteDB(t), SQLite, StoreOptions{Table: uniqueTable("nomigrate")})
			must(t, err)
			return s
		}, "does not exist"},
		{"unknown role", func(t *testing.T) *Store {
			cfg, err := pgxpool.ParseConfig(integration.Postgres(t))
			must(t, err)
			cfg.ConnConfig.User = "no_such_role_omnibus"
			cfg.ConnConfig.Password = "wrong-password"
			pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
			must(t, err)
			t.Cleanup(pool.Close)
			s, err := NewPgxStore(pool, StoreOptions{})
			must(t, err)
			return s
		}, "authentication failed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewRelay(tc.store(t), newMemClient(t), RelayOptions{RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
			must(t, err)
			ctx, cancel := context.WithTimeout(context.Background(), failAfter)
			defer cancel()
			err = r.Run(ctx)
			if ctx.Err() != nil {
				t.Fatalf("Run retried for %v instead of stopping", failAfter)
			}
			if !errors.Is(err, pubsub.ErrPermanent) {
				t.Fatalf("Run = %v, want an error wrapping ErrPermanent", err)
			}
			if !strings.Contains(err.Error(), tc.mention) && !strings.Contains(err.Error(), "may not connect") {
				t.Errorf("Run = %q, want it to say %q", err, tc.mention)
			}
		})
	}
}

// countingHandler counts Warn records by message prefix.
type countingHandler struct {
	mu    sync.Mutex
	warns []string
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn {
		h.mu.Lock()
		h.warns = append(h.warns, r.Message)
		h.mu.Unlock()
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

// A database that stays unreachable (a refused port) is retried with
// backoff and logged when the failure starts, not once per retry.
func TestRelay_TransientFailureIsLoggedOnceThenPeriodically(t *testing.T) {
	cfg, err := pgxpool.ParseConfig(integration.Postgres(t))
	must(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	refused := ln.Addr().String()
	ln.Close() // nothing listens there now: every dial is refused
	var dials atomic.Int64
	enough := make(chan struct{})
	cfg.ConnConfig.DialFunc = func(ctx context.Context, network, _ string) (net.Conn, error) {
		if dials.Add(1) == 30 {
			close(enough)
		}
		var d net.Dialer
		return d.DialContext(ctx, network, refused)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	must(t, err)
	t.Cleanup(pool.Close)
	s, err := NewPgxStore(pool, StoreOptions{})
	must(t, err)
	h := &countingHandler{}
	r, err := NewRelay(s, newMemClient(t), RelayOptions{RetryMin: time.Millisecond, RetryMax: 2 * time.Millisecond,
		ErrorLogInterval: time.Hour, LagLogInterval: -1, Logger: slog.New(h)})
	must(t, err)
	stop := runRelay(t, r)
	select {
	case <-enough:
	case <-time.After(failAfter):
		t.Fatalf("only %d connection attempts in %v", dials.Load(), failAfter)
	}
	stop()
	h.mu.Lock()
	defer h.mu.Unlock()
	var relayWarns []string
	for _, w := range h.warns {
		if strings.Contains(w, "database error") {
			relayWarns = append(relayWarns, w)
		}
	}
	if len(relayWarns) != 1 {
		t.Errorf("%d connection attempts logged %d warnings %q, want 1", dials.Load(), len(relayWarns), relayWarns)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
