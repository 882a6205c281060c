package pubsubtest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// The driver-level cases call the adapter's driver.Broker and
// driver.Subscription directly, bypassing the portable layer (as Go CDK's
// drivertest does), so that every path of the contract an adapter
// implements runs: ReceiveBatch's bounds and cancellation, SendAcks and
// SendNacks on their own, Close redelivering what was not acked, Traits.
// Run includes them under "Driver/".
func runDriver(t *testing.T, h Harness) {
	cases := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"TraitsAreSaneAndStable", testDriverTraits},
		{"ReceiveBatchKeepsFieldsAndHonoursMax", testDriverReceiveBatch},
		{"SendAcksAckAndCloseRedeliversTheRest", testDriverAckThenClose},
		{"SendNacksRedelivers", testDriverNack},
		{"ReceiveBatchReturnsWhenItsContextEnds", testDriverReceiveCancel},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, h) })
	}
}

// driverOf opens a client and returns its driver.
func (h Harness) driverOf(t *testing.T) driver.Broker {
	t.Helper()
	return h.client(bg(), t).Driver()
}

func (h Harness) openDriverSub(t *testing.T, b driver.Broker, topic, group string) driver.Subscription {
	t.Helper()
	opts := driver.SubscriptionOptions{Group: group, StartFromOldest: b.Capabilities().Replay, MaxBatch: 100}
	ctx, cancel := context.WithTimeout(bg(), h.wait())
	defer cancel()
	s, err := b.OpenSubscription(ctx, topic, opts)
	if err != nil {
		t.Fatalf("OpenSubscription(%q, group %q): %v", topic, group, err)
	}
	return s
}

// receiveN calls ReceiveBatch(max) until n messages came, within the
// harness's wait, and checks that no call returned more than max.
func (h Harness) receiveN(t *testing.T, s driver.Subscription, n, max int) []*driver.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg(), h.wait())
	defer cancel()
	var out []*driver.Message
	for len(out) < n {
		msgs, err := s.ReceiveBatch(ctx, max)
		if err != nil {
			t.Fatalf("ReceiveBatch after %d of %d: %v", len(out), n, err)
		}
		if len(msgs) > max {
			t.Fatalf("ReceiveBatch(max %d) returned %d messages", max, len(msgs))
		}
		for _, m := range msgs {
			cp := *m // the adapter may reuse the struct at its next call
			out = append(out, &cp)
		}
	}
	return out
}

func driverMessages(prefix string, n int) []*driver.Message {
	msgs := make([]*driver.Message, n)
	for i := range msgs {
		msgs[i] = &driver.Message{
			ID: fmt.Sprintf("%s-%d", prefix, i), Key: fmt.Sprintf("k%d", i), // distinct keys: an adapter may hold a key until its message is acked
			Payload:  []byte(fmt.Sprintf("payload %d", i)),
			Metadata: map[string]string{"n": fmt.Sprint(i)},
		}
	}
	return msgs
}

func (h Harness) sendBatch(t *testing.T, b driver.Broker, topic string, msgs []*driver.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(bg(), h.wait())
	defer cancel()
	if check := b.Traits().CheckMessage; check != nil {
		for _, m := range msgs {
			if err := check(m); err != nil {
				t.Fatalf("Traits.CheckMessage refused an ordinary message %q: %v", m.ID, err)
			}
		}
	}
	if err := b.SendBatch(ctx, topic, msgs); err != nil {
		t.Fatalf("SendBatch to %q: %v", topic, err)
	}
}

func testDriverTraits(t *testing.T, h Harness) {
	b := h.driverOf(t)
	tr := b.Traits()
	if tr.MaxSendBatch < 0 || tr.MaxConcurrentSends < 0 {
		t.Fatalf("Traits has negative bounds: %+v", tr)
	}
	again := b.Traits()
	if again.MaxSendBatch != tr.MaxSendBatch || again.MaxConcurrentSends != tr.MaxConcurrentSends ||
		again.GroupSends != tr.GroupSends || again.InlineAcks != tr.InlineAcks {
		t.Fatalf("Traits changed between calls: %+v then %+v", tr, again)
	}
}

func testDriverReceiveBatch(t *testing.T, h Harness) {
	b := h.driverOf(t)
	topic := h.topic(bg(), t)
	s := h.openDriverSub(t, b, topic, groupName(t, "drv"))
	defer s.Close()
	sent := driverMessages(topic, 5)
	h.sendBatch(t, b, topic, driverMessages(topic, 5))
	got := h.receiveN(t, s, 5, 2)
	byID := map[string]*driver.Message{}
	for _, m := range got {
		byID[m.ID] = m
	}
	for _, want := range sent {
		m := byID[want.ID]
		switch {
		case m == nil:
			t.Fatalf("message %s not received (got %d)", want.ID, len(got))
		case m.Key != want.Key || string(m.Payload) != string(want.Payload) || m.Metadata["n"] != want.Metadata["n"]:
			t.Fatalf("message %s arrived as key %q payload %q metadata %v", want.ID, m.Key, m.Payload, m.Metadata)
		case m.AckID == nil:
			t.Fatalf("message %s has no AckID", want.ID)
		}
	}
	ids := make([]driver.AckID, len(got))
	for i, m := range got {
		ids[i] = m.AckID
	}
	if err := s.SendAcks(bg(), ids); err != nil {
		t.Fatalf("SendAcks: %v", err)
	}
}

func testDriverAckThenClose(t *testing.T, h Harness) {
	b := h.driverOf(t)
	if !b.Capabilities().Groups {
		t.Skip("adapter does not claim Capabilities.Groups")
	}
	topic := h.topic(bg(), t)
	group := groupName(t, "drv")
	s := h.openDriverSub(t, b, topic, group)
	h.sendBatch(t, b, topic, driverMessages(topic, 4))
	got := h.receiveN(t, s, 4, 4)
	acked := map[string]bool{}
	var ids []driver.AckID
	for _, m := range got[:2] {
		acked[m.ID] = true
		ids = append(ids, m.AckID)
	}
	if err := s.SendAcks(bg(), ids); err != nil {
		t.Fatalf("SendAcks: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s2 := h.openDriverSub(t, b, topic, group)
	defer s2.Close()
	again := h.receiveN(t, s2, 2, 10)
	for _, m := range again {
		if acked[m.ID] {
			t.Fatalf("message %s was acked with SendAcks before Close and came back", m.ID)
		}
	}
}

func testDriverNack(t *testing.T, h Harness) {
	b := h.driverOf(t)
	topic := h.topic(bg(), t)
	s := h.openDriverSub(t, b, topic, groupName(t, "drv"))
	defer s.Close()
	h.sendBatch(t, b, topic, driverMessages(topic, 1))
	first := h.receiveN(t, s, 1, 1)[0]
	if err := s.SendNacks(bg(), []driver.AckID{first.AckID}, 0); err != nil {
		t.Fatalf("SendNacks: %v", err)
	}
	second := h.receiveN(t, s, 1, 1)[0]
	if second.ID != first.ID {
		t.Fatalf("after a nack got %q, want %q again", second.ID, first.ID)
	}
	if err := s.SendAcks(bg(), []driver.AckID{second.AckID}); err != nil {
		t.Fatalf("SendAcks: %v", err)
	}
}

func testDriverReceiveCancel(t *testing.T, h Harness) {
	b := h.driverOf(t)
	topic := h.topic(bg(), t)
	s := h.openDriverSub(t, b, topic, groupName(t, "drv"))
	defer s.Close()
	ctx, cancel := context.WithCancel(bg())
	done := make(chan error, 1)
	go func() {
		_, err := s.ReceiveBatch(ctx, 10)
		done <- err
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(h.wait()):
		t.Fatalf("ReceiveBatch on an empty topic did not return within %v of its context ending", h.wait())
	}
}
