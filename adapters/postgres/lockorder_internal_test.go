package postgres

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Heartbeats of many held claims running while acks and nacks of the same
// claims (in any order, several at a time) reach the database never
// deadlock: every statement that writes held rows locks them in seq order.
// Before that, the heartbeat locked rows in map order and an ack in ack
// order, and PostgreSQL cancelled one of them (SQLSTATE 40P01) after its
// deadlock_timeout; a cancelled ack was lost until the visibility timeout.
func TestHeartbeatAcksAndNacksNeverDeadlock(t *testing.T) {
	const topic, total = "lockorder", 3000
	b, s, pool := ownTables(t, integration.Postgres(t)+"&pool_max_conns=8", "lockorder",
		Options{VisibilityTimeout: time.Minute, DisableKeyOrdering: true}, topic)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	msgs := make([]*driver.Message, total)
	for i := range msgs {
		msgs[i] = &driver.Message{ID: fmt.Sprint(i), Payload: []byte("x")}
	}
	if err := b.SendBatch(ctx, topic, msgs); err != nil {
		t.Fatal(err)
	}
	var ids []driver.AckID
	for len(ids) < total {
		got, err := s.ReceiveBatch(ctx, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range got {
			ids = append(ids, m.AckID)
		}
	}
	rand.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })

	var mu sync.Mutex
	var failures []string
	fail := func(what string, err error) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, fmt.Sprintf("%s: %v", what, err))
	}
	settled := make(chan struct{})
	var hb sync.WaitGroup
	hb.Add(1)
	beats := 0
	go func() { // the heartbeat, back to back
		defer hb.Done()
		for {
			select {
			case <-settled:
				return
			default:
			}
			if _, err := s.extendHeld(ctx); err != nil {
				fail("heartbeat", err)
			}
			beats++
		}
	}()
	const workers, chunk = 4, 30
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lo := w * chunk; lo < len(ids); lo += workers * chunk {
				part := ids[lo:min(lo+chunk, len(ids))]
				// Every third chunk is nacked (it stays in the table).
				if lo/chunk%3 == 2 {
					if err := s.SendNacks(ctx, part, time.Hour); err != nil {
						fail("nack", err)
					}
				} else if err := s.ackNow(ctx, part); err != nil {
					fail("ack", err)
				}
			}
		}()
	}
	wg.Wait()
	close(settled)
	hb.Wait()
	for _, f := range failures {
		t.Error(f)
	}
	var left, held int
	if err := pool.QueryRow(ctx, `SELECT count(*), count(holder) FROM `+b.queue+` WHERE topic = $1`, topic).Scan(&left, &held); err != nil {
		t.Fatal(err)
	}
	nacked := 0
	for lo := 0; lo < len(ids); lo += chunk {
		if lo/chunk%3 == 2 {
			nacked += min(chunk, len(ids)-lo)
		}
	}
	if left != nacked || held != 0 {
		t.Errorf("%d rows left (%d held), want the %d nacked ones, none held", left, held, nacked)
	}
	t.Logf("%d heartbeats during %d acks/nacks", beats, total/chunk)
}

// An ack that PostgreSQL picks as the victim of a deadlock (here with a
// user's transaction that locks the same rows in the opposite order) is
// sent again and succeeds once the other transaction is done, instead of
// failing and leaving its rows to be redelivered.
func TestAckSentAgainAfterDeadlockVictim(t *testing.T) {
	app := fmt.Sprintf("omnibus-victim-%d", time.Now().UnixNano()%1e9)
	// The broker's sessions detect deadlocks after 50ms, the user's after
	// the server's default (1s): the ack is the one PostgreSQL cancels.
	u := integration.Postgres(t) + "&application_name=" + app + "&options=-c%20deadlock_timeout%3D50ms"
	b, s, _ := ownTables(t, u, "victim", Options{DisableKeyOrdering: true}, "victim")
	user, err := pgxpool.New(context.Background(), integration.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(user.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := b.SendBatch(ctx, "victim", []*driver.Message{{ID: "a", Payload: []byte("a")}, {ID: "b", Payload: []byte("b")}}); err != nil {
		t.Fatal(err)
	}
	got, err := s.ReceiveBatch(ctx, 2)
	if err != nil || len(got) != 2 {
		t.Fatalf("claimed %d, %v; want 2", len(got), err)
	}
	first, second := got[0].AckID.(ackID).seq, got[1].AckID.(ackID).seq

	tx, err := user.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	lock := `SELECT seq FROM ` + b.queue + ` WHERE seq = $1 FOR UPDATE`
	if _, err := tx.Exec(ctx, lock, second); err != nil {
		t.Fatal(err)
	}
	acked := make(chan error, 1)
	go func() { acked <- s.ackNow(ctx, []driver.AckID{got[0].AckID, got[1].AckID}) }()
	// The ack holds the first row and waits for the second.
	for {
		var waiting bool
		if err := user.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock')`, app).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting {
			break
		}
		select {
		case err := <-acked:
			t.Fatalf("ack returned (%v) while the user's transaction holds one of its rows", err)
		case <-ctx.Done():
			t.Fatal("the ack never waited for the locked row")
		case <-time.After(5 * time.Millisecond):
		}
	}
	// Now the user waits for the first row: a cycle, and the ack is cancelled.
	if _, err := tx.Exec(ctx, lock, first); err != nil {
		t.Fatalf("the user's transaction was the victim: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-acked; err != nil {
		t.Fatalf("ack failed: %v", err)
	}
	var left int
	if err := user.QueryRow(ctx, `SELECT count(*) FROM `+b.queue).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d rows left after the ack, want 0", left)
	}
}
