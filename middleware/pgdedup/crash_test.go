package pgdedup_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/omnibusmq/omnibus/adapters/postgres" // postgres:// for the crash-kit consumers
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/middleware/pgdedup"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
	"github.com/omnibusmq/omnibus/router"
)

// The crash-kit consumers (this test binary re-executed) find their tables
// in these variables, set by the test before it starts them.
const (
	envInboxTable   = "OMNIBUS_CRASH_INBOX_TABLE"
	envEffectsTable = "OMNIBUS_CRASH_EFFECTS_TABLE"
)

func TestMain(m *testing.M) {
	pubsubtest.CrashMain()
	os.Exit(m.Run())
}

func storeFromEnv(ctx context.Context) (*pgxpool.Pool, *pgdedup.Store, error) {
	pool, err := pgxpool.New(ctx, os.Getenv(integration.EnvPostgres))
	if err != nil {
		return nil, nil, err
	}
	s, err := pgdedup.New(ctx, pool, pgdedup.Options{Table: os.Getenv(envInboxTable), TTL: time.Hour})
	return pool, s, err
}

func init() {
	// Dedup with the durable store: a duplicate can only take effect when a
	// consumer died between the effect and Complete.
	pubsubtest.RegisterCrashMiddleware("pgdedup", func(ctx context.Context, _ *pubsub.Client) ([]router.Layer, error) {
		_, s, err := storeFromEnv(ctx)
		if err != nil {
			return nil, err
		}
		return []router.Layer{middleware.Dedup(s, middleware.DedupOptions{Lease: 2 * time.Second, BusyDelay: 100 * time.Millisecond})}, nil
	})
	// The transactional inbox: the effect is a row written in the inbox's
	// own transaction; the kit's effect report runs after it commits.
	pubsubtest.RegisterCrashMiddleware("inbox", func(ctx context.Context, _ *pubsub.Client) ([]router.Layer, error) {
		_, s, err := storeFromEnv(ctx)
		if err != nil {
			return nil, err
		}
		effects := pgx.Identifier{os.Getenv(envEffectsTable)}.Sanitize()
		inbox, err := s.Handler("crash", func(ctx context.Context, tx pgx.Tx, m *pubsub.Message) error {
			_, err := tx.Exec(ctx, `INSERT INTO `+effects+` (id) VALUES ($1)`, m.ID)
			return err
		})
		if err != nil {
			return nil, err
		}
		return []router.Layer{router.Middleware(func(report router.Handler) router.Handler {
			return func(ctx context.Context, m *pubsub.Message) error {
				if err := inbox(ctx, m); err != nil {
					return err
				}
				return report(ctx, m)
			}
		})}, nil
	})
}

// Consumers SIGKILLed mid-stream: with Dedup on the Postgres store few
// effects repeat; with the transactional inbox none does, and nothing is
// lost either way.
func TestCrashKitDedupAndInbox(t *testing.T) {
	base := integration.Postgres(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, base)
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	t.Cleanup(pool.Close)
	for _, mw := range []string{"pgdedup", "inbox"} {
		t.Run(mw, func(t *testing.T) {
			suffix := fmt.Sprintf("%d", time.Now().UnixNano()%1e12)
			inboxTable, effectsTable := "crash_inbox_"+suffix, "crash_effects_"+suffix
			t.Setenv(envInboxTable, inboxTable)
			t.Setenv(envEffectsTable, effectsTable)
			if _, err := pool.Exec(ctx, `CREATE TABLE `+effectsTable+` (id text NOT NULL)`); err != nil {
				t.Fatalf("effects table: %v", err)
			}
			if _, err := pgdedup.New(ctx, pool, pgdedup.Options{Table: inboxTable, TTL: time.Hour}); err != nil {
				t.Fatalf("inbox table: %v", err)
			}
			t.Cleanup(func() {
				_, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+effectsTable+`, `+inboxTable)
			})
			rep := pubsubtest.RunCrash(t, pubsubtest.CrashOptions{
				URL:        base + "&visibility_timeout=2s",
				Topic:      "crash-" + mw + "-" + suffix,
				Middleware: mw,
				Messages:   2000,
				Kills:      5,
			})
			if mw != "inbox" {
				return
			}
			var rows, distinct int
			if err := pool.QueryRow(ctx, `SELECT count(*), count(DISTINCT id) FROM `+effectsTable).Scan(&rows, &distinct); err != nil {
				t.Fatalf("count effects: %v", err)
			}
			t.Logf("inbox: %d effect rows, %d distinct, of %d published", rows, distinct, rep.Published)
			if distinct != rep.Published || rows != distinct {
				t.Errorf("inbox: %d effect rows for %d distinct messages of %d published, want exactly one each", rows, distinct, rep.Published)
			}
		})
	}
}
