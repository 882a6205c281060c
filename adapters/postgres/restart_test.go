//go:build unix

package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/postgres"
	"github.com/omnibusmq/omnibus/integration/pgserver"
	"github.com/omnibusmq/omnibus/internal/wait"
	"github.com/omnibusmq/omnibus/pubsub"
)

// Crashing the database server while a group consumes and a publisher
// publishes loses nothing: every message whose Publish returned nil is
// delivered, first deliveries of each key stay in publish order, and the
// subscription and publisher recover by themselves once the server is back
// (same client, same subscription, no reopening).
func TestConsumeSurvivesPostgresRestart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		crash func(s *pgserver.Server)
	}{
		{"immediate shutdown", func(s *pgserver.Server) { s.Stop("immediate") }},
		{"SIGKILL of the postmaster", (*pgserver.Server).Kill},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := pgserver.New(t)
			u := withParams(t, c.URL(), "visibility_timeout", "2s", "poll_interval", "100ms", "connect_timeout", "2")
			pub := open(t, u)
			topic, group := uniq("restart"), uniq("g")
			sub := subscribe(t, open(t, u), topic, pubsub.Group(group))

			const total, per, keys = 3000, 10, 8
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			var mu sync.Mutex
			published := map[string]int{} // id -> index, once Publish returned nil
			delivered := map[string]int{} // id -> deliveries
			next := map[string]int{}      // key -> index of its next expected first delivery
			var violations []string
			half := make(chan struct{})
			restarted := make(chan time.Time, 1)
			var recovered time.Duration

			pubDone := make(chan error, 1)
			go func() {
				failures := 0
				for i := 0; i < total; i += per {
					if i == total/2 {
						close(half)
					}
					var batch []*pubsub.Message
					for j := i; j < i+per; j++ {
						batch = append(batch, &pubsub.Message{ID: fmt.Sprintf("m%d", j), Key: fmt.Sprintf("k%d", j%keys), Payload: []byte(strconv.Itoa(j))})
					}
					for {
						err := pub.Publish(ctx, topic, batch...)
						if err == nil {
							break
						}
						if ctx.Err() != nil {
							pubDone <- fmt.Errorf("publish %d: %w (after %d failed attempts)", i, err, failures)
							return
						}
						// Same IDs again: a publish that committed before its
						// answer was lost shows up as a duplicate, not a loss.
						failures++
						wait.Sleep(ctx, 50*time.Millisecond)
					}
					mu.Lock()
					for j := i; j < i+per; j++ {
						published[fmt.Sprintf("m%d", j)] = j
					}
					mu.Unlock()
				}
				t.Logf("publisher: %d failed publish attempts while the server was down", failures)
				pubDone <- nil
			}()

			go func() {
				<-half
				tc.crash(c)
				c.Start()
				restarted <- time.Now()
			}()

			var restartedAt time.Time
			for {
				mu.Lock()
				done := len(published) == total && len(delivered) == total
				mu.Unlock()
				if done {
					break
				}
				d, err := sub.Receive(ctx)
				if err != nil {
					mu.Lock()
					t.Fatalf("receive: %v (published %d, delivered %d distinct)", err, len(published), len(delivered))
				}
				select {
				case restartedAt = <-restarted:
				default:
				}
				id := d.Message.ID
				n, _ := strconv.Atoi(string(d.Message.Payload))
				mu.Lock()
				if delivered[id] == 0 {
					k := d.Message.Key
					if n != next[k]*keys+int(k[1]-'0') {
						violations = append(violations, fmt.Sprintf("key %s: first delivery of %d, want %d", k, n, next[k]*keys+int(k[1]-'0')))
					}
					next[k]++
				}
				delivered[id]++
				if !restartedAt.IsZero() && recovered == 0 {
					recovered = time.Since(restartedAt)
				}
				mu.Unlock()
				if err := d.Ack(); err != nil && !errors.Is(err, pubsub.ErrClosed) {
					t.Errorf("ack: %v", err)
				}
			}
			if err := <-pubDone; err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			lost, dups := 0, 0
			for id := range published {
				if delivered[id] == 0 {
					lost++
				}
				dups += max(delivered[id]-1, 0)
			}
			for _, v := range violations {
				t.Error(v)
			}
			if lost > 0 {
				t.Errorf("%d of %d published messages never delivered", lost, total)
			}
			t.Logf("%s: published %d, lost %d, duplicates %d, per-key order violations %d, first delivery %v after the server was back",
				tc.name, total, lost, dups, len(violations), recovered.Round(time.Millisecond))
		})
	}
}

// An ack sent while the database server is down is sent again until the
// server is back (within the visibility timeout), instead of being logged
// and lost: the message is not redelivered.
func TestAckSentWhileServerDownLandsWhenItIsBack(t *testing.T) {
	c := pgserver.New(t)
	u := withParams(t, c.URL(), "visibility_timeout", "30s", "connect_timeout", "2")
	cl := open(t, u)
	topic := uniq("ackdown")
	s := subscribe(t, cl, topic, pubsub.Group(uniq("g")))
	publishN(t, cl, topic, 1, "")
	d := receive(t, s)
	c.Stop("immediate")
	if err := d.Ack(); err != nil {
		t.Fatalf("ack: %v", err)
	}
	c.Start()
	if err := s.Close(); err != nil { // waits for the ack to be sent
		t.Fatalf("close: %v", err)
	}
	br := cl.Driver().(*postgres.Broker)
	var left int
	if err := pool(t, c.URL()).QueryRow(context.Background(), `SELECT count(*) FROM `+br.QueueTable()+` WHERE topic = $1`, topic).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d row(s) left: the ack sent while the server was down was lost and the message will be redelivered", left)
	}
}
