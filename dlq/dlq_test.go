package dlq_test

import (
	"context"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/dlq"
	"github.com/omnibusmq/omnibus/pubsub"
)

func poison(id, handler, reason, orig string) *pubsub.Message {
	return &pubsub.Message{ID: id, Key: "k-" + id, Payload: []byte("body-" + id), Metadata: map[string]string{
		"x-tenant":            "acme",
		pubsub.MetaAttempt:    "5",
		dlq.MetaReason:        reason,
		dlq.MetaError:         reason + ": details",
		dlq.MetaOriginalTopic: orig,
		dlq.MetaHandler:       handler,
		dlq.MetaAttempts:      "5",
		dlq.MetaFailedAt:      time.Now().UTC().Format(time.RFC3339Nano),
	}}
}

func TestReplayFilteredMovesOnlyMatchesBackWithSameIDAndNoFaultRecord(t *testing.T) {
	ctx := context.Background()
	c := memory.NewClient(memory.Options{})
	defer c.Close()
	orders, err := c.Subscribe(ctx, "orders", pubsub.Group("billing"))
	if err != nil {
		t.Fatal(err)
	}
	defer orders.Close()
	msgs := []*pubsub.Message{
		poison("a", "billing", "timeout talking to bank", "orders"),
		poison("b", "shipping", "bad address", "orders"),
		poison("c", "billing", "timeout talking to bank", "orders"),
	}
	if err := c.Publish(ctx, "orders.poison", msgs...); err != nil {
		t.Fatal(err)
	}
	// Dry run changes nothing.
	res, err := dlq.Replay(ctx, c, "orders.poison", dlq.Options{DryRun: true, Idle: 200 * time.Millisecond, Filter: dlq.Filter{Handler: "billing"}})
	if err != nil || res.Matched != 2 || res.Replayed != 0 {
		t.Fatalf("dry run = %+v, %v; want 2 matched, 0 replayed", res, err)
	}
	res, err = dlq.Replay(ctx, c, "orders.poison", dlq.Options{Idle: 200 * time.Millisecond, Filter: dlq.Filter{Handler: "billing", Reason: "timeout"}})
	if err != nil || res.Scanned != 3 || res.Replayed != 2 {
		t.Fatalf("replay = %+v, %v; want 3 scanned, 2 replayed", res, err)
	}
	got := map[string]*pubsub.Message{}
	for len(got) < 2 {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		d, err := orders.Receive(rctx)
		cancel()
		if err != nil {
			t.Fatalf("replayed messages did not arrive: %v (got %d)", err, len(got))
		}
		_ = d.Ack()
		got[d.Message.ID] = d.Message
	}
	for _, id := range []string{"a", "c"} {
		m := got[id]
		if m == nil {
			t.Fatalf("message %s not replayed", id)
		}
		if m.Key != "k-"+id || string(m.Payload) != "body-"+id || m.Metadata["x-tenant"] != "acme" {
			t.Errorf("message %s changed on replay: %+v", id, m)
		}
		for k := range m.Metadata {
			if k == pubsub.MetaAttempt || len(k) > 15 && k[:15] == "omnibus-poison-" {
				t.Errorf("message %s kept %s after replay", id, k)
			}
		}
	}
	// "b" stays in the poison topic.
	left, err := dlq.List(ctx, c, "orders.poison", dlq.Options{Idle: 200 * time.Millisecond})
	if err != nil || left.Scanned != 1 {
		t.Fatalf("after replay the poison topic holds %+v, %v; want only b", left, err)
	}
}
