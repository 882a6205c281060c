package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// orderLog records first deliveries across competing members and counts
// per-key order violations: a message first delivered after a later message
// of its key was.
type orderLog struct {
	mu         sync.Mutex
	seen       map[string]bool
	last       map[string]int
	violations int
	dups       int
	all        chan struct{} // closed when want messages were delivered
	quarter    chan struct{} // closed when want/4 were
	want       int
}

func newOrderLog(want int) *orderLog {
	return &orderLog{seen: map[string]bool{}, last: map[string]int{}, all: make(chan struct{}), quarter: make(chan struct{}), want: want}
}

func (l *orderLog) record(m *pubsub.Message) {
	seq, _ := strconv.Atoi(m.Metadata["seq"])
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen[m.ID] {
		l.dups++
		return
	}
	l.seen[m.ID] = true
	if last, ok := l.last[m.Key]; ok && seq < last {
		l.violations++
	} else {
		l.last[m.Key] = seq
	}
	switch len(l.seen) {
	case l.want / 4:
		close(l.quarter)
	case l.want:
		close(l.all)
	}
}

func (l *orderLog) distinct() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.seen)
}

// consume receives and acks until ctx ends, recording first deliveries.
func consume(ctx context.Context, sub *pubsub.Subscription, l *orderLog, n *int) {
	for {
		d, err := sub.Receive(ctx)
		if err != nil {
			return
		}
		l.record(d.Message)
		*n++
		_ = d.Ack()
	}
}

// Two members of one group compete for 20 000 keyed messages; the first
// member leaves halfway. Wherever the adapter reports OrderingPerKey (and so
// passes ?require=ordering), no key's messages may be first delivered out of
// publish order; where it cannot keep order, require=ordering must fail.
func TestCompetingConsumersKeepPerKeyOrderWhereOrderingIsReported(t *testing.T) {
	base := integration.AMQP(t)
	const total, keys = 20000, 200
	cases := []struct {
		name         string
		params       string
		wantOrdering bool
	}{
		{"SharedGroupQueue", "", false},
		{"OnePartition", "partitions=1", true},
		{"FourPartitions", "partitions=4", true},
	}
	for _, tc := range cases {
		for _, qt := range []string{"quorum", "classic"} {
			t.Run(tc.name+"/"+qt, func(t *testing.T) {
				url := withParams(base, "queue_type="+qt)
				url = withParams(url, tc.params)
				_, err := pubsub.Open(context.Background(), withParams(url, "require=ordering"))
				if tc.wantOrdering && err != nil {
					t.Fatalf("require=ordering with %q: %v, want it to pass", tc.params, err)
				}
				if !tc.wantOrdering && !errors.Is(err, pubsub.ErrUnsupported) {
					t.Fatalf("require=ordering with %q: %v, want ErrUnsupported (order can break here)", tc.params, err)
				}
				topic := topicName(t)
				pub := openClient(t, url)
				a, b := openClient(t, url), openClient(t, url)
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
				defer cancel()
				subA, err := a.Subscribe(ctx, topic, pubsub.Group("g"))
				if err != nil {
					t.Fatal(err)
				}
				subB, err := b.Subscribe(ctx, topic, pubsub.Group("g"))
				if err != nil {
					t.Fatal(err)
				}
				defer subB.Close()
				l := newOrderLog(total)
				ctxA, stopA := context.WithCancel(ctx)
				defer stopA()
				var nA, nB int
				var wg sync.WaitGroup
				wg.Add(2)
				go func() { defer wg.Done(); consume(ctxA, subA, l, &nA) }()
				go func() { defer wg.Done(); consume(ctx, subB, l, &nB) }()
				began := time.Now()
				msgs := make([]*pubsub.Message, 0, 500)
				for i := 0; i < total; i++ {
					k := i % keys
					msgs = append(msgs, &pubsub.Message{
						ID: fmt.Sprintf("m%d", i), Key: "k" + strconv.Itoa(k), Payload: []byte("x"),
						Metadata: map[string]string{"seq": strconv.Itoa(i / keys)},
					})
					if len(msgs) == cap(msgs) {
						if err := pub.Publish(ctx, topic, msgs...); err != nil {
							t.Fatal(err)
						}
						msgs = msgs[:0]
					}
					if i == total/2 {
						// Member A leaves while messages flow: B takes over.
						select {
						case <-l.quarter:
						case <-ctx.Done():
							t.Fatalf("only %d messages delivered", l.distinct())
						}
						stopA()
						_ = subA.Close()
					}
				}
				select {
				case <-l.all:
				case <-ctx.Done():
					t.Fatalf("only %d of %d messages delivered", l.distinct(), total)
				}
				took := time.Since(began)
				cancel()
				wg.Wait()
				l.mu.Lock()
				defer l.mu.Unlock()
				t.Logf("%s %s: OrderingPerKey=%v, %d messages over %d keys in %v: member A %d, member B %d deliveries, %d duplicates, %d per-key order violations",
					tc.name, qt, a.Capabilities().OrderingPerKey, total, keys, took.Round(time.Millisecond), nA, nB, l.dups, l.violations)
				if a.Capabilities().OrderingPerKey != tc.wantOrdering {
					t.Errorf("OrderingPerKey = %v, want %v", a.Capabilities().OrderingPerKey, tc.wantOrdering)
				}
				if a.Capabilities().OrderingPerKey && l.violations > 0 {
					t.Errorf("%d per-key order violations of first deliveries although OrderingPerKey is reported", l.violations)
				}
			})
		}
	}
}
