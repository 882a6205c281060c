package faults_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/postgres"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// A claim whose answer is lost (the connection cut after PostgreSQL ran
// it and before its rows reached the client) leaves rows claimed for the
// subscription that it never received. They must come next, in key order,
// long before the visibility timeout would free them; claiming past them
// would hand out a key's later messages first.
func TestPostgresClaimWhoseAnswerIsLostKeepsKeyOrderAndDelaysNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	raw := integration.Postgres(t)
	direct, err := pubsub.Open(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	b, ok := direct.Driver().(*postgres.Broker)
	if !ok {
		t.Fatalf("driver is %T, want *postgres.Broker", direct.Driver())
	}
	topic := fmt.Sprintf("omnibus-faults-lostclaim-%d", time.Now().UnixNano())
	first, err := direct.Subscribe(ctx, topic, pubsub.Group("g")) // the group exists before the messages
	if err != nil {
		t.Fatal(err)
	}
	_ = first.Close()
	const n = 10
	for i := 0; i < n; i++ {
		if err := direct.Publish(ctx, topic, &pubsub.Message{ID: fmt.Sprintf("m%d", i), Key: "k", Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}

	p, u := viaProxy(t, raw, "visibility_timeout=60s")
	c, err := pubsub.Open(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	heal := p.Latency(1500 * time.Millisecond)
	sub, err := c.Subscribe(ctx, topic, pubsub.Group("g"), pubsub.Prefetch(3))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	// Wait until the subscription's first claim ran in the database; its
	// answer is still on its way through the proxy. Then cut it off.
	for held := 0; held == 0; {
		if err := b.Pool().QueryRow(ctx, `SELECT count(*) FROM `+b.QueueTable()+` WHERE topic = $1 AND grp = 'g' AND holder IS NOT NULL`, topic).Scan(&held); err != nil {
			t.Fatalf("waiting for the first claim: %v", err)
		}
	}
	p.Cut()
	heal()
	cut := time.Now()

	// Well within the visibility timeout (60 s).
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	defer rcancel()
	var got []string // first deliveries
	seen := map[string]bool{}
	for len(got) < n {
		d, err := sub.Receive(rctx)
		if err != nil {
			t.Fatalf("received %v, then: %v", got, err)
		}
		if !seen[d.Message.ID] {
			seen[d.Message.ID] = true
			got = append(got, d.Message.ID)
		}
		if err := d.Ack(); err != nil {
			t.Fatalf("ack %s: %v", d.Message.ID, err)
		}
	}
	t.Logf("first deliveries %v, all %v after the cut", got, time.Since(cut).Round(time.Millisecond))
	for i, id := range got {
		if want := fmt.Sprintf("m%d", i); id != want {
			t.Fatalf("first deliveries %v: want m0..m%d in order", got, n-1)
		}
	}
}
