package faults_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/omnibusmq/omnibus/adapters/activemq"
	_ "github.com/omnibusmq/omnibus/adapters/nsq"
	_ "github.com/omnibusmq/omnibus/adapters/postgres"
	"github.com/omnibusmq/omnibus/integration"
)

// brokerURLs are the adapters whose clients reach their broker through the
// host of their URL alone, so that a proxy in that host carries all their
// traffic (Kafka's clients follow the cluster's advertised addresses: its
// proxy test is adapters/kafka's idempotence test; RabbitMQ has its own
// tests above).
func proxied(t *testing.T, name string) (string, string) {
	switch name {
	case "postgres":
		return integration.Postgres(t), ""
	case "nsq":
		// Without lookupd the consumer dials the URL's nsqd itself. The
		// deliveries in flight on a cut connection come back after
		// msg_timeout.
		u := integration.NSQ(t)
		if i := strings.Index(u, "?"); i >= 0 {
			u = u[:i]
		}
		return u, "durable=true&msg_timeout=5s"
	case "activemq":
		return integration.ActiveMQ(t), "groups=g"
	}
	t.Fatalf("unknown adapter %q", name)
	return "", ""
}

// Every connection of the client is cut every 2 s while 20 000 messages are
// published and consumed: every message whose Publish returned nil is
// consumed.
func TestConnectionsCutEveryTwoSecondsLoseNothing(t *testing.T) {
	for _, name := range []string{"postgres", "nsq", "activemq"} {
		t.Run(name, func(t *testing.T) {
			raw, params := proxied(t, name)
			p, u := viaProxy(t, raw, params)
			r := start(t, u, "cut-"+name, 6*time.Minute)
			const total = 20000
			stopCuts, cutsDone := make(chan struct{}), make(chan struct{})
			var cuts atomic.Int64
			go func() {
				defer close(cutsDone)
				tick := time.NewTicker(2 * time.Second)
				defer tick.Stop()
				for {
					select {
					case <-tick.C:
						p.Cut()
						cuts.Add(1)
					case <-stopCuts:
						return
					}
				}
			}()
			began := time.Now()
			var maxCall atomic.Int64
			publishAll(r.ctx, r.c, r.topic, total, 100, 4, r.l, &maxCall)
			r.l.publishDone()
			select {
			case <-r.l.allIn:
			case <-r.ctx.Done():
			}
			close(stopCuts)
			<-cutsDone
			lost := r.l.lost()
			r.l.mu.Lock()
			defer r.l.mu.Unlock()
			t.Logf("%s: %d messages in %v with %d cuts: published ok %d, failed %d, consumed distinct %d, lost %d, duplicates %d, longest Publish %v",
				name, total, time.Since(began).Round(time.Millisecond), cuts.Load(), len(r.l.published), r.l.failed, len(r.l.consumed), lost, r.l.dups,
				time.Duration(maxCall.Load()).Round(time.Millisecond))
			if cuts.Load() == 0 {
				t.Error("no cut happened during the run")
			}
			if lost > 0 {
				t.Errorf("%d messages whose Publish returned nil were never consumed", lost)
			}
		})
	}
}
