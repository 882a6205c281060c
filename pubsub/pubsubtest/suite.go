package pubsubtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/omnibusmq/omnibus/pubsub"
)

// Run runs the whole conformance suite against the broker behind h.
func Run(t *testing.T, h Harness) {
	if h.Open == nil {
		t.Fatal("pubsubtest: Harness.Open is nil")
	}
	cases := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"RoundTripKeepsIDKeyPayloadMetadata", testRoundTrip},
		{"PublishFillsTimeOrderedIDs", testIDs},
		{"CompetingConsumersShareOneGroup", testCompeting},
		{"FanOutEveryGroupGetsEveryMessage", testFanOut},
		{"NackRedeliversSameMessage", testNack},
		{"NackWithDelayWaitsAtLeastTheDelay", testNackDelay},
		{"AttemptIncrementsOnRedelivery", testAttempts},
		{"OrderPerKeyUnderConcurrentPublishers", testOrderPerKey},
		{"GroupKeepsPositionAcrossSubscriberRestart", testGroupPersists},
		{"NoRedeliveryAfterAck", testNoRedeliveryAfterAck},
		{"ClosedClientAndSubscriptionReturnErrClosed", testClosed},
		{"AckTwiceIsAnError", testAckTwice},
		{"ContextCancellationUnblocksReceive", testCancelReceive},
		{"ConcurrentPublishersAllDelivered", testConcurrentPublishers},
		{"BadInputIsAClearError", testBadInput},
		{"UnackedRedeliveredAfterSubscriberClose", testAtLeastOnce},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, h) })
	}
	t.Run("Driver", func(t *testing.T) { runDriver(t, h) })
}

func bg() context.Context { return context.Background() }

func testRoundTrip(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	caps := c.Capabilities()
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	binary := make([]byte, 256)
	for i := range binary {
		binary[i] = byte(i)
	}
	cases := []struct {
		name string
		msg  pubsub.Message
	}{
		{"EmptyPayload", pubsub.Message{ID: "rt-empty", Key: "k1", Payload: nil}},
		{"TextWithMetadata", pubsub.Message{ID: "rt-text", Key: "order-42", Payload: []byte(`{"order":42}`),
			Metadata: map[string]string{"content-type": "application/json", "x-tenant": "acme"}}},
		{"BinaryPayload", pubsub.Message{ID: "rt-binary", Payload: binary}},
		{"UnicodeMetadata", pubsub.Message{ID: "rt-unicode-ü", Key: "clé-🔑", Payload: []byte("héllo wörld ✓"),
			Metadata: map[string]string{"greeting": "こんにちは", "emoji": "🚀✨", "x-empty": ""}}},
		{"OneMiBPayload", pubsub.Message{ID: "rt-1mib", Key: "big", Payload: big}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if max := caps.MaxMessageSize; max > 0 && len(tc.msg.Payload) > max-4096 {
				t.Skipf("payload of %d bytes is over the adapter's MaxMessageSize %d", len(tc.msg.Payload), max)
			}
			topic := h.topic(ctx, t)
			s := h.subscribe(ctx, t, c, topic, pubsub.Group(groupName(t, "rt")))
			sent := tc.msg
			publish(ctx, t, c, topic, &sent)
			d := h.receive(t, s)
			ack(t, d)
			got := d.Message
			if got.ID != tc.msg.ID {
				t.Errorf("ID = %q, want %q", got.ID, tc.msg.ID)
			}
			if got.Key != tc.msg.Key {
				t.Errorf("Key = %q, want %q", got.Key, tc.msg.Key)
			}
			if !bytes.Equal(got.Payload, tc.msg.Payload) {
				t.Errorf("Payload: got %d bytes, want %d (first diff at %d)", len(got.Payload), len(tc.msg.Payload), firstDiff(got.Payload, tc.msg.Payload))
			}
			for k, v := range tc.msg.Metadata {
				if got.Metadata[k] != v {
					t.Errorf("Metadata[%q] = %q, want %q", k, got.Metadata[k], v)
				}
			}
			for k := range got.Metadata {
				if _, sent := tc.msg.Metadata[k]; !sent && !strings.HasPrefix(k, "omnibus-") {
					t.Errorf("Metadata has %q, which was not sent (only omnibus-* keys may be added)", k)
				}
			}
			if got.Topic != topic {
				t.Errorf("Topic = %q, want %q", got.Topic, topic)
			}
			if got.Attempt != 1 {
				t.Errorf("Attempt = %d on first delivery, want 1", got.Attempt)
			}
			if !got.PublishedAt.IsZero() && got.PublishedAt.After(time.Now().Add(time.Minute)) {
				t.Errorf("PublishedAt = %v is in the future", got.PublishedAt)
			}
		})
	}
}

func firstDiff(a, b []byte) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func testIDs(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	topic := h.topic(ctx, t)
	s := h.subscribe(ctx, t, c, topic, pubsub.Group(groupName(t, "ids")))
	msgs := make([]*pubsub.Message, 50)
	for i := range msgs {
		msgs[i] = &pubsub.Message{Payload: []byte(strconv.Itoa(i))}
	}
	publish(ctx, t, c, topic, msgs...)
	seen := map[string]bool{}
	for i, m := range msgs {
		u, err := uuid.Parse(m.ID)
		if err != nil || u.Version() != 7 {
			t.Fatalf("message %d: ID %q is not a UUIDv7 (err %v)", i, m.ID, err)
		}
		if seen[m.ID] {
			t.Fatalf("message %d: ID %q repeated", i, m.ID)
		}
		seen[m.ID] = true
		if i > 0 && m.ID <= msgs[i-1].ID {
			t.Errorf("IDs not time-ordered: %q after %q", m.ID, msgs[i-1].ID)
		}
	}
	for range msgs {
		d := h.receive(t, s)
		ack(t, d)
		if !seen[d.Message.ID] {
			t.Errorf("received ID %q, not one the publisher filled in", d.Message.ID)
		}
		delete(seen, d.Message.ID)
	}
}

// collect receives from every subscription until want distinct IDs arrived
// (acking each), and returns how many times each ID was seen per subscription.
func (h Harness) collect(t *testing.T, want int, subs ...*pubsub.Subscription) ([]map[string]int, map[string]int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg(), h.wait())
	defer cancel()
	per := make([]map[string]int, len(subs))
	for i := range per {
		per[i] = map[string]int{}
	}
	total := map[string]int{}
	var mu sync.Mutex
	Consume(ctx, subs, func(i int, d *pubsub.Delivery) {
		if err := d.Ack(); err != nil {
			t.Errorf("ack: %v", err)
		}
		mu.Lock()
		per[i][d.Message.ID]++
		total[d.Message.ID]++
		if len(total) >= want {
			cancel()
		}
		mu.Unlock()
	})
	mu.Lock()
	defer mu.Unlock()
	if len(total) < want {
		t.Fatalf("received %d distinct messages within %v, want %d", len(total), h.wait(), want)
	}
	return per, total
}

func testCompeting(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	needGroups(t, c)
	topic := h.topic(ctx, t)
	group := groupName(t, "compete")
	s1 := h.subscribe(ctx, t, c, topic, pubsub.Group(group))
	c2 := h.client(ctx, t)
	s2 := h.subscribe(ctx, t, c2, topic, pubsub.Group(group))
	const n = 400
	msgs := make([]*pubsub.Message, n)
	for i := range msgs {
		msgs[i] = &pubsub.Message{Key: fmt.Sprintf("k%d", i%16), Payload: []byte(strconv.Itoa(i))}
	}
	for i := 0; i < n; i += 20 {
		publish(ctx, t, c, topic, msgs[i:i+20]...)
	}
	per, total := h.collect(t, n, s1, s2)
	for id, k := range total {
		if k != 1 {
			t.Errorf("message %s delivered %d times across the group, want once", id, k)
		}
	}
	t.Logf("member 1 got %d, member 2 got %d", len(per[0]), len(per[1]))
}

func testFanOut(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	needGroups(t, c)
	topic := h.topic(ctx, t)
	a := h.subscribe(ctx, t, c, topic, pubsub.Group(groupName(t, "a")))
	b := h.subscribe(ctx, t, c, topic, pubsub.Group(groupName(t, "b")))
	const n = 100
	msgs := make([]*pubsub.Message, n)
	for i := range msgs {
		msgs[i] = &pubsub.Message{Payload: []byte(strconv.Itoa(i))}
	}
	publish(ctx, t, c, topic, msgs...)
	for name, s := range map[string]*pubsub.Subscription{"a": a, "b": b} {
		_, total := h.collect(t, n, s)
		for _, m := range msgs {
			if total[m.ID] != 1 {
				t.Errorf("group %s got message %s %d times, want 1", name, m.ID, total[m.ID])
			}
		}
	}
}

func testNack(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	topic := h.topic(ctx, t)
	s := h.subscribe(ctx, t, c, topic, pubsub.Group(groupName(t, "nack")))
	m := &pubsub.Message{Key: "k", Payload: []byte("again"), Metadata: map[string]string{"h": "v"}}
	publish(ctx, t, c, topic, m)
	d := h.receive(t, s)
	if err := d.Nack(0); err != nil {
		t.Fatalf("nack: %v", err)
	}
	d2 := h.receive(t, s)
	ack(t, d2)
	if d2.Message.ID != m.ID || string(d2.Message.Payload) != "again" || d2.Message.Metadata["h"] != "v" || d2.Message.Key != "k" {
		t.Errorf("redelivered %+v, want the nacked message %s intact", d2.Message, m.ID)
	}
}

func testNackDelay(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	topic := h.topic(ctx, t)
	s := h.subscribe(ctx, t, c, topic, pubsub.Group(groupName(t, "delay")))
	for _, delay := range []time.Duration{0, 700 * time.Millisecond} {
		t.Run(delay.String(), func(t *testing.T) {
			m := &pubsub.Message{Payload: []byte("later")}
			publish(ctx, t, c, topic, m)
			d := h.receive(t, s)
			nackedAt := time.Now()
			if err := d.Nack(delay); err != nil {
				t.Fatalf("nack: %v", err)
			}
			d2 := h.receive(t, s)
			elapsed := time.Since(nackedAt)
			ack(t, d2)
			if d2.Message.ID != m.ID {
				t.Fatalf("got %s, want redelivery of %s", d2.Message.ID, m.ID)
			}
			if elapsed < delay {
				t.Errorf("redelivered after %v, sooner than the nack delay %v", elapsed, delay)
			}
		})
	}
}

func testAttempts(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	topic := h.topic(ctx, t)
	s := h.subscribe(ctx, t, c, topic, pubsub.Group(groupName(t, "attempts")))
	m := &pubsub.Message{Payload: []byte("x")}
	publish(ctx, t, c, topic, m)
	for want := 1; want <= 4; want++ {
		d := h.receive(t, s)
		if d.Message.ID != m.ID {
			t.Fatalf("got %s, want %s", d.Message.ID, m.ID)
		}
		if d.Message.Attempt != want {
			t.Errorf("delivery %d: Attempt = %d", want, d.Message.Attempt)
		}
		if want < 4 {
			_ = d.Nack(0)
		} else {
			ack(t, d)
		}
	}
}

func testOrderPerKey(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	if !c.Capabilities().OrderingPerKey {
		t.Skip("adapter does not claim Capabilities.OrderingPerKey")
	}
	topic := h.topic(ctx, t)
	s := h.subscribe(ctx, t, c, topic, pubsub.Group(groupName(t, "order")))
	const keys, per = 8, 60
	var wg sync.WaitGroup
	errs := make(chan error, keys)
	for k := 0; k < keys; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i += 3 {
				var batch []*pubsub.Message
				for j := i; j < i+3; j++ {
					batch = append(batch, &pubsub.Message{Key: fmt.Sprintf("key-%d", k), Payload: []byte(strconv.Itoa(j))})
				}
				if err := c.Publish(ctx, topic, batch...); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("publish: %v", err)
	}
	next := map[string]int{}
	for i := 0; i < keys*per; i++ {
		d := h.receive(t, s)
		ack(t, d)
		n, _ := strconv.Atoi(string(d.Message.Payload))
		if n != next[d.Message.Key] {
			t.Fatalf("key %s: got sequence %d, want %d (order per key broken)", d.Message.Key, n, next[d.Message.Key])
		}
		next[d.Message.Key]++
	}
}

func testGroupPersists(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	needGroups(t, c)
	topic := h.topic(ctx, t)
	group := groupName(t, "persist")
	s := h.subscribe(ctx, t, c, topic, pubsub.Group(group))
	var first []*pubsub.Message
	for i := 0; i < 10; i++ {
		first = append(first, &pubsub.Message{Key: "p", Payload: []byte(strconv.Itoa(i))})
	}
	publish(ctx, t, c, topic, first...)
	acked := map[string]bool{}
	for i := 0; i < 5; i++ {
		d := h.receive(t, s)
		ack(t, d)
		acked[d.Message.ID] = true
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close subscription: %v", err)
	}
	var second []*pubsub.Message
	for i := 10; i < 20; i++ {
		second = append(second, &pubsub.Message{Key: "p", Payload: []byte(strconv.Itoa(i))})
	}
	publish(ctx, t, c, topic, second...)
	c2 := h.client(ctx, t)
	s2 := h.subscribe(ctx, t, c2, topic, pubsub.Group(group))
	want := 0
	wantIDs := map[string]bool{}
	for _, m := range append(first, second...) {
		if !acked[m.ID] {
			want++
			wantIDs[m.ID] = true
		}
	}
	_, total := h.collect(t, want, s2)
	for id := range wantIDs {
		if total[id] == 0 {
			t.Errorf("message %s published while the group had no member (or never acked) was not delivered after restart", id)
		}
	}
	for id := range total {
		if acked[id] {
			t.Errorf("message %s was acked before the restart but delivered again", id)
		}
	}
}

func testNoRedeliveryAfterAck(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	topic := h.topic(ctx, t)
	group := groupName(t, "noredeliver")
	s := h.subscribe(ctx, t, c, topic, pubsub.Group(group))
	a := &pubsub.Message{Payload: []byte("a")}
	publish(ctx, t, c, topic, a)
	d := h.receive(t, s)
	ack(t, d)
	b := &pubsub.Message{Payload: []byte("b")}
	publish(ctx, t, c, topic, b)
	if d := h.receive(t, s); d.Message.ID != b.ID {
		t.Fatalf("after acking %s got %s, want %s", a.ID, d.Message.ID, b.ID)
	} else {
		ack(t, d)
	}
	if !c.Capabilities().Groups {
		return
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	cm := &pubsub.Message{Payload: []byte("c")}
	publish(ctx, t, c, topic, cm)
	s2 := h.subscribe(ctx, t, c, topic, pubsub.Group(group))
	if d := h.receive(t, s2); d.Message.ID != cm.ID {
		t.Fatalf("after restart got %s (%q), want %s: acked messages must not come back", d.Message.ID, d.Message.Payload, cm.ID)
	} else {
		ack(t, d)
	}
}

func testClosed(t *testing.T, h Harness) {
	ctx := bg()
	c, err := h.Open(ctx, t)
	if err != nil {
		t.Fatal(err)
	}
	topic := h.topic(ctx, t)
	s, err := c.Subscribe(ctx, topic, append(h.SubscribeOptions, pubsub.Group(groupName(t, "closed")))...)
	if err != nil {
		t.Fatal(err)
	}
	publish(ctx, t, c, topic, &pubsub.Message{Payload: []byte("x")})
	d := h.receive(t, s)
	if err := s.Close(); err != nil {
		t.Fatalf("close subscription: %v", err)
	}
	if _, err := s.Receive(ctx); !errors.Is(err, pubsub.ErrClosed) {
		t.Errorf("Receive after subscription Close: %v, want ErrClosed", err)
	}
	if err := d.Ack(); !errors.Is(err, pubsub.ErrClosed) {
		t.Errorf("Ack after subscription Close: %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second subscription Close: %v, want nil", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("close client: %v", err)
	}
	if err := c.Publish(ctx, topic, &pubsub.Message{}); !errors.Is(err, pubsub.ErrClosed) {
		t.Errorf("Publish after Close: %v, want ErrClosed", err)
	}
	if _, err := c.Subscribe(ctx, topic); !errors.Is(err, pubsub.ErrClosed) {
		t.Errorf("Subscribe after Close: %v, want ErrClosed", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v, want nil", err)
	}
}

func testAckTwice(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	topic := h.topic(ctx, t)
	s := h.subscribe(ctx, t, c, topic, pubsub.Group(groupName(t, "twice")))
	publish(ctx, t, c, topic, &pubsub.Message{Payload: []byte("x")})
	d := h.receive(t, s)
	ack(t, d)
	if err := d.Ack(); !errors.Is(err, pubsub.ErrAlreadyAcked) {
		t.Errorf("second Ack: %v, want ErrAlreadyAcked", err)
	}
	if err := d.Nack(0); !errors.Is(err, pubsub.ErrAlreadyAcked) {
		t.Errorf("Nack after Ack: %v, want ErrAlreadyAcked", err)
	}
}

func testCancelReceive(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	topic := h.topic(ctx, t)
	s := h.subscribe(ctx, t, c, topic, pubsub.Group(groupName(t, "cancel")))
	rctx, cancel := context.WithCancel(ctx)
	res := make(chan error, 1)
	go func() {
		_, err := s.Receive(rctx)
		res <- err
	}()
	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Receive after cancel: %v, want context.Canceled", err)
		}
	case <-time.After(h.wait()):
		t.Fatalf("Receive still blocked %v after its context was cancelled", h.wait())
	}
	// A subscription closed while Receive blocks unblocks it too.
	go func() {
		_, err := s.Receive(ctx)
		res <- err
	}()
	_ = s.Close()
	select {
	case err := <-res:
		if !errors.Is(err, pubsub.ErrClosed) {
			t.Errorf("Receive during Close: %v, want ErrClosed", err)
		}
	case <-time.After(h.wait()):
		t.Fatalf("Receive still blocked %v after Close", h.wait())
	}
}

func testConcurrentPublishers(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	topic := h.topic(ctx, t)
	s := h.subscribe(ctx, t, c, topic, pubsub.Group(groupName(t, "conc")))
	const writers, per = 16, 50
	ids := make(chan string, writers*per)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				m := &pubsub.Message{Key: fmt.Sprintf("w%d", w), Payload: []byte(fmt.Sprintf("%d-%d", w, i))}
				if err := c.Publish(ctx, topic, m); err != nil {
					t.Errorf("publish: %v", err)
					return
				}
				ids <- m.ID
			}
		}()
	}
	wg.Wait()
	close(ids)
	_, total := h.collect(t, writers*per, s)
	for id := range ids {
		if total[id] != 1 {
			t.Errorf("message %s delivered %d times, want 1", id, total[id])
		}
	}
}

func testBadInput(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	topic := h.topic(ctx, t)
	check := func(name string, err error, mention string) {
		t.Helper()
		if !errors.Is(err, pubsub.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
			return
		}
		if !strings.Contains(err.Error(), mention) {
			t.Errorf("%s: error %q does not mention %q", name, err, mention)
		}
	}
	check("Publish to empty topic", c.Publish(ctx, "", &pubsub.Message{}), "topic")
	check("Publish nil message", c.Publish(ctx, topic, &pubsub.Message{}, nil), "message 1")
	_, err := c.Subscribe(ctx, "")
	check("Subscribe to empty topic", err, "topic")
	_, err = c.Subscribe(ctx, topic, pubsub.Group(""))
	check("Subscribe with empty group", err, "group")
	if max := c.Capabilities().MaxMessageSize; max > 0 && max < 64<<20 {
		err := c.Publish(ctx, topic, &pubsub.Message{ID: "too-big", Payload: make([]byte, max+1)})
		check("Publish oversize payload", err, strconv.Itoa(max+1))
	}
}

func testAtLeastOnce(t *testing.T, h Harness) {
	ctx := bg()
	c := h.client(ctx, t)
	needGroups(t, c)
	topic := h.topic(ctx, t)
	group := groupName(t, "alo")
	s := h.subscribe(ctx, t, c, topic, pubsub.Group(group))
	var msgs []*pubsub.Message
	// Ten keys: all ten are received before any is acked, and a broker
	// that holds a key until its message is acked (Postgres key_ordering)
	// hands out only the first message of each key meanwhile.
	for i := 0; i < 10; i++ {
		msgs = append(msgs, &pubsub.Message{Key: fmt.Sprintf("alo-%d", i), Payload: []byte(strconv.Itoa(i))})
	}
	publish(ctx, t, c, topic, msgs...)
	for i := 0; i < 10; i++ {
		h.receive(t, s) // received, never acked
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	c2 := h.client(ctx, t)
	s2 := h.subscribe(ctx, t, c2, topic, pubsub.Group(group))
	_, total := h.collect(t, len(msgs), s2)
	for _, m := range msgs {
		if total[m.ID] == 0 {
			t.Errorf("unacked message %s was not redelivered after its subscriber closed", m.ID)
		}
	}
}
