package kafka_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

// TestRouterKeepsPerKeyOrderOver100kMessages pins the end-to-end ordering
// promise on real Kafka: 100k messages over 500 keys, consumed by the router
// with Concurrency(32) and OrderedByKey, reach the handler exactly in publish
// order per key, every one of them, none twice.
func TestRouterKeepsPerKeyOrderOver100kMessages(t *testing.T) {
	n, keys := 100_000, 500
	if testing.Short() {
		n = 20_000
	}
	// start=earliest: the router's group begins at the oldest message, so
	// publishing before Run cannot race the group's first join.
	c := openClient(t, "start=earliest")
	topic := newTopic(t, c, uniqueName(t, "router"))
	next := make([]int, keys) // next sequence number per key, for the publisher
	batch := make([]*pubsub.Message, 0, 1000)
	for i := 0; i < n; i++ {
		k := i % keys
		batch = append(batch, &pubsub.Message{Key: "key-" + strconv.Itoa(k), Payload: []byte(strconv.Itoa(next[k]))})
		next[k]++
		if len(batch) == cap(batch) {
			if err := c.Publish(context.Background(), topic, batch...); err != nil {
				t.Fatalf("publish: %v", err)
			}
			batch = batch[:0]
		}
	}

	var mu sync.Mutex
	want := map[string]int{}
	handled, violations := 0, 0
	var firstViolation string
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := router.New(c, router.Options{})
	r.Handle(topic, uniqueName(t, "g"), func(ctx context.Context, m *pubsub.Message) error {
		seq, err := strconv.Atoi(string(m.Payload))
		if err != nil {
			return pubsub.Permanent(fmt.Errorf("payload %q: %w", m.Payload, err))
		}
		mu.Lock()
		defer mu.Unlock()
		if seq != want[m.Key] {
			violations++
			if firstViolation == "" {
				firstViolation = fmt.Sprintf("key %s: got sequence %d, want %d", m.Key, seq, want[m.Key])
			}
		}
		want[m.Key] = seq + 1
		handled++
		if handled == n {
			cancel()
		}
		return nil
	}, router.Concurrency(32), router.OrderedByKey())

	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(ctx) }()
	select {
	case err := <-runErr:
		if err != nil && !strings.Contains(err.Error(), "context canceled") {
			t.Fatalf("router: %v", err)
		}
	case <-time.After(routerTimeout):
		cancel()
		mu.Lock()
		behind := map[int]int{}
		for k := 0; k < keys; k++ {
			if w := want["key-"+strconv.Itoa(k)]; w != next[k] {
				behind[partitionOf("key-"+strconv.Itoa(k))] += next[k] - w
			}
		}
		t.Fatalf("router handled %d of %d messages within %v; missing per partition: %v", handled, n, routerTimeout, behind)
	}
	mu.Lock()
	defer mu.Unlock()
	if violations > 0 {
		t.Fatalf("%d per-key order violations; first: %s", violations, firstViolation)
	}
	if handled != n {
		t.Fatalf("handled %d messages, want %d", handled, n)
	}
	for k := 0; k < keys; k++ {
		if got := want["key-"+strconv.Itoa(k)]; got != next[k] {
			t.Errorf("key-%d: handled up to %d, want %d", k, got, next[k])
		}
	}
}

// routerTimeout bounds the router test (a failure timeout, not a measurement).
var routerTimeout = 5 * time.Minute
