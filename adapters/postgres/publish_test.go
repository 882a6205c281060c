package postgres_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/postgres"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// drain receives from s until it has every id in want (acking each), and
// fails on anything else or after 30 s.
func drain(t *testing.T, s *pubsub.Subscription, want map[string]bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got := map[string]bool{}
	for len(got) < len(want) {
		d, err := s.Receive(ctx)
		if err != nil {
			t.Fatalf("%s: received %d of %d: %v", s.Topic(), len(got), len(want), err)
		}
		if !want[d.Message.ID] {
			t.Errorf("%s: unexpected message %s", s.Topic(), d.Message.ID)
		}
		got[d.Message.ID] = true
		_ = d.Ack()
	}
}

func ids(msgs ...[]*pubsub.Message) map[string]bool {
	m := map[string]bool{}
	for _, ms := range msgs {
		for _, x := range ms {
			m[x.ID] = true
		}
	}
	return m
}

// A publisher that has learnt a topic has named groups publishes without
// the topic lock, but still reads the groups in its INSERT: a message
// reaches every group registered before it was published, also one that
// another process registered after the publisher learnt the topic, and it
// goes to the backlog again when the groups were deleted by hand.
func TestPublishReachesEveryGroupRegisteredBeforeIt(t *testing.T) {
	u := integration.Postgres(t)
	admin := pool(t, u)
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, pub, other *pubsub.Client, topic string)
	}{
		{"group of another process registered after the publisher learnt the topic", func(t *testing.T, pub, other *pubsub.Client, topic string) {
			g1 := subscribe(t, other, topic, pubsub.Group(uniq("g1")))
			first := publishN(t, pub, topic, 2, "") // the publisher learns: named groups exist
			g2 := subscribe(t, other, topic, pubsub.Group(uniq("g2")))
			second := publishN(t, pub, topic, 2, "")
			drain(t, g1, ids(first, second))
			drain(t, g2, ids(second))
		}},
		{"named groups deleted by hand", func(t *testing.T, pub, other *pubsub.Client, topic string) {
			g1 := subscribe(t, other, topic, pubsub.Group(uniq("g1")))
			first := publishN(t, pub, topic, 1, "")
			drain(t, g1, ids(first))
			_ = g1.Close()
			br := pub.Driver().(*postgres.Broker)
			if _, err := admin.Exec(context.Background(), `DELETE FROM `+br.GroupsTable()+` WHERE topic = $1`, topic); err != nil {
				t.Fatal(err)
			}
			orphan := publishN(t, pub, topic, 2, "") // no group: the backlog keeps them
			g3 := subscribe(t, other, topic, pubsub.Group(uniq("g3")))
			drain(t, g3, ids(orphan))
		}},
		{"first publishes before any group", func(t *testing.T, pub, other *pubsub.Client, topic string) {
			early := publishN(t, pub, topic, 2, "")
			g1 := subscribe(t, other, topic, pubsub.Group(uniq("g1")))
			late := publishN(t, pub, topic, 2, "")
			drain(t, g1, ids(early, late))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, open(t, u), open(t, u), uniq("fanout"))
		})
	}
}

// Publishers racing the registration of a topic's first group (in another
// process) lose nothing: every message lands in the backlog the group
// adopts or in the group itself, while the publishers switch from the
// locked path to the lock-free one.
func TestPublishersRacingFirstGroupLoseNothing(t *testing.T) {
	u := integration.Postgres(t)
	pub, other := open(t, u), open(t, u)
	topic := uniq("race")
	const publishers, per = 4, 150
	var mu sync.Mutex
	var sent []*pubsub.Message
	var wg sync.WaitGroup
	registered := make(chan *pubsub.Subscription, 1)
	for w := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				if w == 0 && i == per/3 {
					registered <- subscribe(t, other, topic, pubsub.Group(uniq("first")))
				}
				m := &pubsub.Message{Payload: []byte(fmt.Sprint(w, i))}
				if err := pub.Publish(context.Background(), topic, m); err != nil {
					t.Errorf("publish: %v", err)
					return
				}
				mu.Lock()
				sent = append(sent, m)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	drain(t, <-registered, ids(sent))
}

// Subscribers of another process are woken by the NOTIFY sent after the
// publish commits: with a poll interval of ten minutes the message still
// arrives at once.
func TestSubscriberOfAnotherProcessWokenAfterPublish(t *testing.T) {
	u := integration.Postgres(t)
	pub := open(t, u)
	sub := open(t, withParams(t, u, "poll_interval", "10m"))
	topic := uniq("wake")
	s := subscribe(t, sub, topic, pubsub.Group(uniq("g")))
	for round := range 3 {
		m := publishN(t, pub, topic, 1, "")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		d, err := s.Receive(ctx)
		cancel()
		if err != nil {
			t.Fatalf("round %d: not woken: %v", round, err)
		}
		if d.Message.ID != m[0].ID {
			t.Fatalf("round %d: got %s, want %s", round, d.Message.ID, m[0].ID)
		}
		_ = d.Ack()
	}
}
