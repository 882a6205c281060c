package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// ownTables opens a Broker with opts on tables of its own (a unique prefix
// from name, dropped when the test ends) over a new pool on rawURL, and
// subscribes group "g" to topic.
func ownTables(t *testing.T, rawURL, name string, opts Options, topic string) (*Broker, *subscription, *pgxpool.Pool) {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), rawURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts.TablePrefix = fmt.Sprintf("omnibus_%s_%d_", name, time.Now().UnixNano()%1e9)
	b, err := New(ctx, pool, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = b.Close()
		_, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+b.queue+`, `+b.groups)
	})
	ds, err := b.OpenSubscription(ctx, topic, driver.SubscriptionOptions{Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	return b, ds.(*subscription), pool
}

// ackNow acks ids and deletes them at once, on the caller's goroutine
// (SendAcks leaves the delete to the ack flusher), for tests that watch the
// delete itself.
func (s *subscription) ackNow(ctx context.Context, ids []driver.AckID) error {
	seqs, atts, err := splitIDs(ids)
	if err != nil {
		return err
	}
	keyed, woke, _ := s.settled(seqs, atts, true)
	if woke {
		s.poke()
	}
	return s.deleteAcked(ctx, seqs, atts, keyed)
}
