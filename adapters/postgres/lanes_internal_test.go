package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// When a subscription's own claims expire (its heartbeats did not get
// through for a visibility timeout) and it claims the rows again, the new
// claims take the old ones' places in the key's lane: the message out is
// handed out again, a settle of its old delivery is ignored, and the ack of
// the new one hands out the next parked message. The key is not stuck.
func TestReclaimedOwnClaimsKeepTheKeyMoving(t *testing.T) {
	b, s, pool := ownTables(t, integration.Postgres(t), "reclaim",
		Options{VisibilityTimeout: time.Minute, PollInterval: 10 * time.Millisecond}, "reclaim")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := b.SendBatch(ctx, "reclaim", []*driver.Message{{ID: "a", Key: "k"}, {ID: "b", Key: "k"}}); err != nil {
		t.Fatal(err)
	}
	receive := func(want string, attempt int) driver.AckID {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		got, err := s.ReceiveBatch(rctx, 10)
		if err != nil || len(got) != 1 || got[0].ID != want || got[0].Attempt != attempt {
			var ids []string
			for _, m := range got {
				ids = append(ids, fmt.Sprintf("%s#%d", m.ID, m.Attempt))
			}
			t.Fatalf("received %v, %v; want %s#%d", ids, err, want, attempt)
		}
		return got[0].AckID
	}
	old := receive("a", 1) // b is parked behind it
	// The heartbeat did not get through: both claims expire.
	if _, err := pool.Exec(ctx, `UPDATE `+b.queue+` SET visible_at = now() - interval '1 second' WHERE topic = 'reclaim'`); err != nil {
		t.Fatal(err)
	}
	again := receive("a", 2)
	if err := s.SendAcks(context.Background(), []driver.AckID{old}); err != nil { // the old delivery's ack: ignored by the lane
		t.Fatal(err)
	}
	if err := s.SendAcks(context.Background(), []driver.AckID{again}); err != nil {
		t.Fatal(err)
	}
	receive("b", 2) // claimed twice, handed out once
}
