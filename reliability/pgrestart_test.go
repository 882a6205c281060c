//go:build unix

package reliability_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/omnibusmq/omnibus/integration/pgserver"
	"github.com/omnibusmq/omnibus/internal/wait"
	"github.com/omnibusmq/omnibus/outbox"
	"github.com/omnibusmq/omnibus/pubsub"
)

// sendTimes records when each Publish of the client it observes returned
// nil.
type sendTimes struct {
	mu sync.Mutex
	at []time.Time
}

func (s *sendTimes) Publish(context.Context, string, []*pubsub.Message) func(error) {
	return func(err error) {
		if err == nil {
			s.mu.Lock()
			s.at = append(s.at, time.Now())
			s.mu.Unlock()
		}
	}
}

// firstAfter returns how long after t the first successful Publish
// returned, and false if none did.
func (s *sendTimes) firstAfter(t time.Time) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, at := range s.at {
		if at.After(t) {
			return at.Sub(t), true
		}
	}
	return 0, false
}

// relayRecoveryBound is how soon after the database server is back the
// relay must forward again: its backoff waits at most RetryMax (default
// 10 s) between attempts, plus a margin for the attempt itself.
const relayRecoveryBound = 15 * time.Second

// The PostgreSQL server that holds both the outbox and the postgres://
// broker the relay forwards into crashes while rows are committed and
// relayed, and is started again: every row committed to the outbox is
// delivered to the consumer group, first deliveries keep per-key order,
// duplicates are counted, and the relay (same process, same Relay, default
// retry settings) forwards again by itself within relayRecoveryBound. A
// private server (integration/pgserver), not the shared one.
func TestRelayRecoversFromAPostgresRestart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		crash func(s *pgserver.Server)
	}{
		{"immediate shutdown", func(s *pgserver.Server) { s.Stop("immediate") }},
		{"SIGKILL of the postmaster", (*pgserver.Server).Kill},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := pgserver.New(t)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			dbURL := srv.URL() + "&connect_timeout=2"
			pool, err := pgxpool.New(ctx, dbURL)
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			const table, topic, group = "relay_restart", "relay-restart", "g"
			store, err := outbox.NewPgxStore(pool, outbox.StoreOptions{Table: table})
			if err != nil {
				t.Fatal(err)
			}
			if err := store.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
			brokerURL := dbURL + "&visibility_timeout=5s&poll_interval=100ms"
			consumer, err := pubsub.Open(ctx, brokerURL)
			if err != nil {
				t.Fatal(err)
			}
			defer consumer.Close()
			sub, err := consumer.Subscribe(ctx, topic, pubsub.Group(group))
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			sent := &sendTimes{}
			relayClient, err := pubsub.Open(ctx, brokerURL, pubsub.WithObserver(sent))
			if err != nil {
				t.Fatal(err)
			}
			defer relayClient.Close()
			relay, err := outbox.NewRelay(store, relayClient, outbox.RelayOptions{BatchSize: 100,
				Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
			if err != nil {
				t.Fatal(err)
			}
			rctx, stopRelay := context.WithCancel(ctx)
			relayDone := make(chan error, 1)
			go func() { relayDone <- relay.Run(rctx) }()
			defer func() {
				stopRelay()
				if err := <-relayDone; err != nil {
					t.Errorf("relay: %v", err)
				}
			}()

			cctx, stopConsumer := context.WithCancel(ctx)
			defer stopConsumer()
			deliveries := consume(cctx, sub)

			// The writer commits rows in transactions of 20 (16 keys); a
			// transaction that fails is retried with the same rows (a
			// commit whose answer was lost then shows as a duplicate).
			const rows, perTx, keys = 4000, 20, 16
			var mu sync.Mutex
			committed := map[string]int{} // message ID -> its sequence within its key
			half := make(chan struct{})
			writerDone := make(chan error, 1)
			failedTx := 0
			go func() {
				perKey := make([]int, keys)
				for start := 0; start < rows; start += perTx {
					var msgs []*pubsub.Message
					seqs := make([]int, 0, perTx)
					for i := start; i < start+perTx; i++ {
						k := i % keys
						seqs = append(seqs, perKey[k])
						msgs = append(msgs, &pubsub.Message{ID: fmt.Sprintf("row-%d", i), Key: "key-" + strconv.Itoa(k), Payload: []byte(strconv.Itoa(perKey[k]))})
						perKey[k]++
					}
					for {
						err := commitRows(ctx, pool, store, topic, msgs)
						if err == nil {
							break
						}
						if ctx.Err() != nil {
							writerDone <- fmt.Errorf("commit rows from %d: %w (after %d failed transactions)", start, err, failedTx)
							return
						}
						failedTx++
						wait.Sleep(ctx, 50*time.Millisecond)
					}
					mu.Lock()
					for i, m := range msgs {
						committed[m.ID] = seqs[i]
					}
					if len(committed) == rows/2 {
						close(half)
					}
					mu.Unlock()
				}
				writerDone <- nil
			}()

			seen := map[string]int{}
			last := map[string]int{}
			dups, violations := 0, 0
			var crashAt, backAt time.Time
			var beforeCrash map[string]bool // rows committed before the crash
			var allBeforeCrashIn time.Duration
			stall := time.NewTimer(time.Minute)
			defer stall.Stop()
			writing := true
			for {
				mu.Lock()
				done := !writing && len(seen) >= len(committed) && allIn(committed, seen)
				mu.Unlock()
				if done {
					break
				}
				select {
				case <-half:
					half = nil
					mu.Lock()
					beforeCrash = make(map[string]bool, len(committed))
					for id := range committed {
						beforeCrash[id] = true
					}
					mu.Unlock()
					crashAt = time.Now()
					tc.crash(srv)
					srv.Start()
					backAt = time.Now()
				case err := <-writerDone:
					if err != nil {
						t.Fatal(err)
					}
					writing = false
				case g := <-deliveries:
					if g.err != nil {
						t.Fatalf("consumer after %d rows: %v", len(seen), g.err)
					}
					stall.Reset(time.Minute)
					if seen[g.id]++; seen[g.id] > 1 {
						dups++
						continue
					}
					mu.Lock()
					seq, ok := committed[g.id]
					mu.Unlock()
					if !ok {
						continue // its transaction's commit was still being confirmed
					}
					if prev, ok := last[g.key]; ok && seq < prev {
						violations++
					}
					last[g.key] = max(last[g.key], seq)
					if allBeforeCrashIn == 0 && !backAt.IsZero() && allIn(beforeCrash, seen) {
						allBeforeCrashIn = time.Since(backAt)
					}
				case <-stall.C:
					t.Fatalf("no delivery for a minute: %d of %d committed rows delivered", len(seen), len(committed))
				}
			}
			if backAt.IsZero() {
				t.Fatal("the writer finished before the server was restarted: the test proved nothing")
			}
			recovery, ok := sent.firstAfter(backAt)
			lost := 0
			for id := range committed {
				if seen[id] == 0 {
					lost++
				}
			}
			if lost > 0 {
				t.Errorf("%d committed rows never delivered", lost)
			}
			t.Logf("%s: rows committed %d, delivered %d, lost %d, duplicates %d, order violations %d, failed writer transactions %d; server down for %v; relay forwarded again %v after the server was back; every row committed before the crash delivered %v after it was back; relay forwarded %d rows in all",
				tc.name, rows, len(seen), lost, dups, violations, failedTx, backAt.Sub(crashAt).Round(time.Millisecond),
				recovery.Round(time.Millisecond), allBeforeCrashIn.Round(time.Millisecond), relay.Forwarded())
			if !ok {
				t.Error("the relay never forwarded after the server was back")
			} else if recovery > relayRecoveryBound {
				t.Errorf("the relay forwarded again %v after the server was back, want within %v", recovery, relayRecoveryBound)
			}
			if consumer.Capabilities().OrderingPerKey && violations > 0 {
				t.Errorf("%d per-key order violations of first deliveries", violations)
			}
		})
	}
}

// allIn reports whether every ID of want has been seen.
func allIn[V any](want map[string]V, seen map[string]int) bool {
	for id := range want {
		if seen[id] == 0 {
			return false
		}
	}
	return true
}

// commitRows writes msgs to the outbox in one transaction.
func commitRows(ctx context.Context, pool *pgxpool.Pool, store *outbox.Store, topic string, msgs []*pubsub.Message) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	if err := store.Publish(ctx, tx, topic, msgs...); err != nil {
		return err
	}
	return tx.Commit(ctx)
}
