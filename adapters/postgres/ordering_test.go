package postgres_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

// With key_ordering, a nacked message keeps its place: the messages of its
// key that follow it are not handed to any member (the nacking one, which
// prefetches, or a competing one) until it has been redelivered and acked,
// whatever the nack delay. Other keys go on meanwhile. The handler's first
// effects per key therefore come in publish order.
func TestNackedMessageKeepsItsPlaceInItsKey(t *testing.T) {
	u := withParams(t, integration.Postgres(t), "poll_interval", "50ms")
	for _, tc := range []struct {
		name    string
		members int
		delay   time.Duration
	}{
		{"one member, nack without delay", 1, 0},
		{"one member, nack with delay", 1, 300 * time.Millisecond},
		{"two members, nack without delay", 2, 0},
		{"two members, nack with delay", 2, 300 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic, group := uniq("nackplace"), uniq("g")
			c := open(t, u)
			var subs []*pubsub.Subscription
			for range tc.members {
				subs = append(subs, subscribe(t, open(t, u), topic, pubsub.Group(group)))
			}
			// One call: every row is visible at once, so a member's first
			// claim can take all of them (the portable layer asks for 64).
			const per = 10
			var msgs []*pubsub.Message
			for i := range per {
				for _, k := range []string{"a", "b"} {
					msgs = append(msgs, &pubsub.Message{Key: k, Payload: []byte(strconv.Itoa(i))})
				}
			}
			if err := c.Publish(context.Background(), topic, msgs...); err != nil {
				t.Fatal(err)
			}

			var mu sync.Mutex
			effects := map[string][]int{} // per key, the messages in the order they took effect
			nacked := false
			total := 0
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			pubsubtest.Consume(ctx, subs, func(_ int, d *pubsub.Delivery) {
				n, _ := strconv.Atoi(string(d.Message.Payload))
				mu.Lock()
				if d.Message.Key == "a" && n == 0 && !nacked {
					// The first message of key a fails once.
					nacked = true
					mu.Unlock()
					if err := d.Nack(tc.delay); err != nil {
						t.Errorf("nack: %v", err)
					}
					return
				}
				effects[d.Message.Key] = append(effects[d.Message.Key], n)
				// Claims parked behind the nacked message and given back
				// with it were never delivered: they are not an attempt.
				wantAttempt := 1
				if d.Message.Key == "a" && n == 0 {
					wantAttempt = 2
				}
				if d.Message.Attempt != wantAttempt {
					t.Errorf("key %s message %d: Attempt %d, want %d", d.Message.Key, n, d.Message.Attempt, wantAttempt)
				}
				total++
				done := total == 2*per
				mu.Unlock()
				if err := d.Ack(); err != nil {
					t.Errorf("ack: %v", err)
				}
				if done {
					cancel()
				}
			})
			want := make([]int, per)
			for i := range want {
				want[i] = i
			}
			for _, k := range []string{"a", "b"} {
				if got := effects[k]; fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("key %s took effect in the order %v, want %v", k, got, want)
				}
			}
			if !nacked {
				t.Fatal("the first message of key a never arrived")
			}
		})
	}
}
