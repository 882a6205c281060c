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
}

func (l *rebalanceLog) record(o observed) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen = append(l.seen, o)
	if o.ackErr == nil && !l.done[o.id] {
		l.done[o.id] = true
		if len(l.done) == l.want {
			close(l.all)
		}
	}
}

// runMember receives with workers goroutines until s is closed, acking
// each delivery at once and recording it with its ack's result.
func runMember(s *pubsub.Subscription, name string, workers int, l *rebalanceLog, wg *sync.WaitGroup) {
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				d, err := s.Receive(context.Background())
				if err != nil {
					return
				}
				at := time.Now()
				l.record(observed{member: name, id: d.Message.ID, partition: partitionOf(d.Message.Key), at: at, ackErr: d.Ack()})
			}
		}()
	}
}

// TestRebalanceHandsOutNothingFromRevokedPartitions: two members of a group
// consume 50 000 keyed messages while a third joins and leaves every
// 2.5 s, with the default prefetch. Nothing is lost; duplicates per
// membership change stay within the deliveries genuinely in flight in
// handlers (the workers), not the prefetch; a partition's deliveries never
// interleave between members (a member hands out nothing from a partition
// once it was revoked, so ownership switches at most once per change);
// and every failed ack is ErrRevoked for a message that is delivered
// again.
func TestRebalanceHandsOutNothingFromRevokedPartitions(t *testing.T) {
	if testing.Short() {
		t.Skip("50 000 messages and 6 rebalances; not in -short")
	}
	const n, keys, workers, batch = 50_000, 64, 4, 100
	pub := openClient(t, "")
	topic := newTopic(t, pub, uniqueName(t, "rebalance"))
	group := uniqueName(t, "g")
	l := &rebalanceLog{done: map[string]bool{}, want: n, all: make(chan struct{})}
	var wg sync.WaitGroup
	var subs []*pubsub.Subscription
	for _, name := range []string{"A", "B"} {
		s := subscribe(t, openClient(t, ""), topic, group)
		subs = append(subs, s)
		runMember(s, name, workers, l, &wg)
	}

	// Publish at about 2 500 messages/s, so that the run spans the
	// membership changes below.
	pubErr := make(chan error, 1)
	go func() {
		tick := time.NewTicker(40 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < n; i += batch {
			<-tick.C
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

	// A third member joins and leaves every 2.5 s until publishing ends.
	changes := 0
	joiner := openClient(t, "")
	var third *pubsub.Subscription
	tick := time.NewTicker(2500 * time.Millisecond)
	defer tick.Stop()
	published := false
	for !published {
		select {
		case err := <-pubErr:
			if err != nil {
				t.Fatalf("publish: %v", err)
			}
			published = true
			continue
		case <-tick.C:
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
	select {
	case <-l.all:
	case <-time.After(120 * time.Second):
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
		if !errors.Is(o.ackErr, pubsub.ErrRevoked) {
			t.Errorf("ack of %s by %s: %v, want nil or ErrRevoked", o.id, o.member, o.ackErr)
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
	t.Logf("stale acks reported as ErrRevoked: %d; ownership switches per partition: %v", stale, fmt.Sprint(switches))
}
