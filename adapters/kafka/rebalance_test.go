package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
)

// delivery is one hand-out observed by the rebalance test.
type observed struct {
	member    string
	id        string
	partition int
	at        time.Time
	ackErr    error
}

// rebalanceLog collects every hand-out of every member, in one process.
type rebalanceLog struct {
	mu   sync.Mutex
	seen []observed
	done map[string]bool // IDs acked without error
	want int
	all  chan struct{} // closed when every ID was acked once
	step chan struct{} // gets a value every stepEvery IDs acked
}

// stepEvery is how many acked messages separate two membership changes.
const stepEvery = 5000

func (l *rebalanceLog) record(o observed) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen = append(l.seen, o)
	if o.ackErr == nil && !l.done[o.id] {
		l.done[o.id] = true
		if len(l.done) == l.want {
			close(l.all)
		}
		if len(l.done)%stepEvery == 0 {
			select {
			case l.step <- struct{}{}:
			default:
			}
		}
	}
}

// runMember receives with workers goroutines until s is closed, handles
// deliveries at a steady pace (one per tick among its workers: the handlers
// are the bottleneck, so the prefetch buffers stay full), acks each and
// records it with its ack's result.
func runMember(s *pubsub.Subscription, name string, workers int, l *rebalanceLog, wg *sync.WaitGroup) {
	pace := time.NewTicker(250 * time.Microsecond)
	var left sync.WaitGroup
	left.Add(workers)
	go func() { left.Wait(); pace.Stop() }()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer left.Done()
			for {
				d, err := s.Receive(context.Background())
				if err != nil {
					return
				}
				at := time.Now()
				<-pace.C
				l.record(observed{member: name, id: d.Message.ID, partition: partitionOf(d.Message.Key), at: at, ackErr: d.Ack()})
			}
		}()
	}
}

// TestRebalanceHandsOutNothingFromRevokedPartitions: two members of a group
// consume a backlog of 50 000 keyed messages, their handlers the
// bottleneck, while a third joins and leaves every 5 000 acked messages
// (every few seconds), with the default prefetch. Nothing is lost; duplicates per
// membership change stay within the deliveries genuinely in flight in
// handlers (the workers), not the prefetch; a partition's deliveries never
// interleave between members (a member hands out nothing from a partition
// once it was revoked, so ownership switches at most once per change);
// and every failed ack is ErrRevoked (or ErrClosed after the member's own
// Close) for a message that is delivered again.
func TestRebalanceHandsOutNothingFromRevokedPartitions(t *testing.T) {
	if testing.Short() {
		t.Skip("50 000 messages and 6 rebalances; not in -short")
	}
	const n, keys, workers, batch = 50_000, 64, 4, 100
	pub := openClient(t, "")
	topic := newTopic(t, pub, uniqueName(t, "rebalance"))
	group := uniqueName(t, "g")
	l := &rebalanceLog{done: map[string]bool{}, want: n, all: make(chan struct{}), step: make(chan struct{}, 1)}
	var wg sync.WaitGroup
	var subs []*pubsub.Subscription
	for _, name := range []string{"A", "B"} {
		s := subscribe(t, openClient(t, ""), topic, group)
		subs = append(subs, s)
		runMember(s, name, workers, l, &wg)
	}

	// Publish the backlog as fast as the broker takes it.
	pubErr := make(chan error, 1)
	go func() {
		for i := 0; i < n; i += batch {
			msgs := make([]*pubsub.Message, batch)
			for j := range msgs {
				msgs[j] = &pubsub.Message{ID: "m" + strconv.Itoa(i+j), Key: "k" + strconv.Itoa((i+j)%keys), Payload: []byte(strconv.Itoa(i + j))}
			}
			if err := pub.Publish(context.Background(), topic, msgs...); err != nil {
				pubErr <- err
				return
			}
		}
		pubErr <- nil
	}()

	// A third member joins and leaves every 5 000 acked messages (every
	// few seconds) until every message was acked.
	changes := 0
	joiner := openClient(t, "")
	var third *pubsub.Subscription
	deadline := time.After(120 * time.Second)
	for finished := false; !finished; {
		select {
		case err := <-pubErr:
			if err != nil {
				t.Fatalf("publish: %v", err)
			}
			continue
		case <-l.all:
			finished = true
			continue
		case <-deadline:
			finished = true
			continue
		case <-l.step:
		}
		if changes == 8 {
			continue // enough: let the backlog drain
		}
		if third == nil {
			third = subscribe(t, joiner, topic, group)
			runMember(third, "C"+strconv.Itoa(changes), workers, l, &wg)
		} else {
			if err := third.Close(); err != nil {
				t.Fatalf("close the third member: %v", err)
			}
			third = nil
		}
		changes++
	}
	if third != nil {
		subs = append(subs, third)
	}
	for _, s := range subs {
		_ = s.Close()
	}
	wg.Wait()

	l.mu.Lock()
	defer l.mu.Unlock()
	if changes < 4 {
		t.Fatalf("only %d membership changes happened; the test proves nothing", changes)
	}
	// 0 lost.
	if len(l.done) != n {
		t.Fatalf("%d of %d messages were acked; %d lost", len(l.done), n, n-len(l.done))
	}
	// Duplicates within what is genuinely in flight: at most every
	// worker of every member per change.
	count := map[string]int{}
	for _, o := range l.seen {
		count[o.id]++
	}
	dups := len(l.seen) - len(count)
	bound := changes * 3 * workers
	t.Logf("%d deliveries of %d messages: %d duplicates over %d membership changes (%.1f per change; bound %d per change)",
		len(l.seen), n, dups, changes, float64(dups)/float64(changes), 3*workers)
	if dups > bound {
		t.Errorf("%d duplicates over %d membership changes, over the %d in-flight handlers of 3 members per change", dups, changes, 3*workers)
	}
	// Every failed ack is ErrRevoked, and its message is delivered again.
	sort.Slice(l.seen, func(i, j int) bool { return l.seen[i].at.Before(l.seen[j].at) })
	stale := 0
	for i, o := range l.seen {
		if o.ackErr == nil {
			continue
		}
		// ErrClosed: the third member acked after its own Close.
		if !errors.Is(o.ackErr, pubsub.ErrRevoked) && !errors.Is(o.ackErr, pubsub.ErrClosed) {
			t.Errorf("ack of %s by %s: %v, want nil, ErrRevoked or ErrClosed", o.id, o.member, o.ackErr)
			continue
		}
		stale++
		again := false
		for _, later := range l.seen[i+1:] {
			if later.id == o.id {
				again = true
				break
			}
		}
		if !again {
			t.Errorf("ack of %s by %s was refused (ErrRevoked) but the message was never delivered again", o.id, o.member)
		}
	}
	// No interleaving: per partition, hand-outs switch member at most
	// once per membership change.
	switches := map[int]int{}
	last := map[int]string{}
	for _, o := range l.seen {
		if prev, ok := last[o.partition]; ok && prev != o.member {
			switches[o.partition]++
		}
		last[o.partition] = o.member
	}
	for p := 0; p < testPartitions; p++ {
		if switches[p] > changes {
			t.Errorf("partition %d switched member %d times over %d membership changes: two members handed it out at once", p, switches[p], changes)
		}
	}
	t.Logf("stale acks reported as ErrRevoked or ErrClosed: %d; ownership switches per partition: %v", stale, fmt.Sprint(switches))
}
