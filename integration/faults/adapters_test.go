package faults_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/omnibusmq/omnibus/adapters/activemq"
	"github.com/omnibusmq/omnibus/adapters/kafka"
	_ "github.com/omnibusmq/omnibus/adapters/nsq"
	_ "github.com/omnibusmq/omnibus/adapters/postgres"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/integration/faults"
	"github.com/omnibusmq/omnibus/pubsub"
)

// fault is what a test does to a client's connections: one proxy in the
// host of its URL, or a faults.Router in its dial function.
type fault interface {
	Cut()
	BlackHole() (heal func())
}

// kafkaPublishTimeout bounds one Kafka SendBatch in these tests
// (kafka.Options.WriteTimeout): a Publish call returns within it.
const kafkaPublishTimeout = 10 * time.Second

// proxied opens a client of adapter name whose every connection goes
// through a fault proxy. Postgres, NSQ (without lookupd), ActiveMQ and
// RabbitMQ reach their broker through the host of their URL alone, so one
// proxy there carries all their traffic. Kafka clients connect to the
// addresses the cluster advertises: their dial function sends each address
// through a proxy of its own. RabbitMQ's other fault tests are in
// rabbitmq_test.go.
func proxied(t *testing.T, name string) (fault, *pubsub.Client) {
	t.Helper()
	var raw, params string
	switch name {
	case "kafka":
		r := faults.NewRouter(t)
		b, err := kafka.Dial(context.Background(), kafka.Options{
			Brokers: strings.Split(integration.Kafka(t), ","), Dialer: r.Dial,
			AutoCreate: true, Partitions: 4, StartFromOldest: true, WriteTimeout: kafkaPublishTimeout,
		})
		if err != nil {
			t.Fatal(err)
		}
		return r, pubsub.NewClient(b)
	case "postgres":
		raw = integration.Postgres(t)
	case "nsq":
		// Without lookupd the consumer dials the URL's nsqd itself. The
		// deliveries in flight on a cut connection come back after
		// msg_timeout.
		raw, params = integration.NSQ(t), "durable=true&msg_timeout=5s"
		if i := strings.Index(raw, "?"); i >= 0 {
			raw = raw[:i]
		}
	case "activemq":
		raw, params = integration.ActiveMQ(t), "groups=g"
	case "rabbitmq":
		raw, params = integration.AMQP(t), "groups=g"
	default:
		t.Fatalf("unknown adapter %q", name)
	}
	p, u := viaProxy(t, raw, params)
	c, err := pubsub.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	return p, c
}

// Every connection of the client is cut every 2 s while messages are
// published and consumed: every message whose Publish returned nil is
// consumed. Duplicates are counted; on Kafka, whose publishes are
// idempotent and whose consumer resumes from its in-memory position after
// a cut, they must stay below 1% of the messages, and no Publish may
// outlast its timeout.
func TestConnectionsCutEveryTwoSecondsLoseNothing(t *testing.T) {
	for _, tc := range []struct {
		name         string
		total, batch int           // messages, per Publish call
		every        time.Duration // at most one Publish call per interval (0: unpaced)
		minCuts      int64
		maxDups      int           // -1: counted, not bounded
		publishBound time.Duration // 0: not bounded
	}{
		// Each run is paced so that it lasts long enough for its cuts
		// however fast the broker takes the messages: Kafka takes 50 000
		// in under 2 s, Postgres 20 000 in about 1 s. Kafka at most 2 500
		// a second: at least 20 s, about ten cuts; the others at most
		// 4 000 a second: at least 5 s, two cuts.
		{"kafka", 50000, 10, 4 * time.Millisecond, 5, 500, kafkaPublishTimeout},
		{"postgres", 20000, 100, 25 * time.Millisecond, 2, -1, 0},
		{"nsq", 20000, 100, 25 * time.Millisecond, 2, -1, 0},
		{"activemq", 20000, 100, 25 * time.Millisecond, 2, -1, 0},
	} {
		name, total := tc.name, tc.total
		t.Run(name, func(t *testing.T) {
			p, c := proxied(t, name)
			r := startClient(t, c, "cut-"+name, 6*time.Minute)
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
			publishPaced(r.ctx, r.c, r.topic, total, tc.batch, 4, tc.every, r.l, &maxCall)
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
			longest := time.Duration(maxCall.Load())
			t.Logf("%s: %d messages in %v with %d cuts: published ok %d, failed %d, consumed distinct %d, lost %d, duplicates %d, longest Publish %v",
				name, total, time.Since(began).Round(time.Millisecond), cuts.Load(), len(r.l.published), r.l.failed, len(r.l.consumed), lost, r.l.dups,
				longest.Round(time.Millisecond))
			if cuts.Load() < tc.minCuts {
				t.Errorf("%d cuts during the run, want at least %d", cuts.Load(), tc.minCuts)
			}
			if r, ok := p.(*faults.Router); ok {
				// The cuts reached the client: it dialled again after each.
				t.Logf("%s: %d connections opened to %v", name, r.Dials(), r.Upstreams())
				if int64(r.Dials()) <= cuts.Load() {
					t.Errorf("%d connections opened through the proxies for %d cuts: the cuts did not reach the client", r.Dials(), cuts.Load())
				}
			}
			if lost > 0 {
				t.Errorf("%d messages whose Publish returned nil were never consumed", lost)
			}
			if tc.maxDups >= 0 && r.l.dups > tc.maxDups {
				t.Errorf("%d duplicates, want at most %d", r.l.dups, tc.maxDups)
			}
			if tc.publishBound > 0 && longest > tc.publishBound+2*time.Second {
				t.Errorf("a Publish took %v, past its timeout %v", longest, tc.publishBound)
			}
		})
	}
}

// A 2 s black hole (both directions, connections left open) on every
// connection of a Kafka client, to every broker it dialled, during
// publishing: every Publish returns (nil or an error) within its timeout,
// and every message whose Publish returned nil is consumed.
func TestKafkaBlackHoleOfTwoSecondsHangsNothingAndLosesNothing(t *testing.T) {
	p, c := proxied(t, "kafka")
	r := startClient(t, c, "blackhole-kafka", 3*time.Minute)
	l := r.l
	const total = 20000
	longest, recovered, lost := r.blackHoleForTwoSeconds(t, p, total)
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("%d messages, 2 s black hole on the connections to %v: published ok %d, failed %d, consumed distinct %d, lost %d, duplicates %d, longest Publish %v (timeout %v), all consumed %v after the hole began",
		total, p.(*faults.Router).Upstreams(), len(l.published), l.failed, len(l.consumed), lost, l.dups, longest.Round(time.Millisecond), kafkaPublishTimeout,
		recovered.Round(time.Millisecond))
	if lost > 0 {
		t.Errorf("%d messages whose Publish returned nil were never consumed", lost)
	}
	if longest > kafkaPublishTimeout+2*time.Second {
		t.Errorf("a Publish took %v, past its timeout %v", longest, kafkaPublishTimeout)
	}
}

// A Publish whose context ends while the broker is silent (a black hole on
// every connection of the client) returns by then with the context's error:
// on the connection it has, and after a cut, when it must dial again while
// another call is dialing. Once traffic flows again, publishing works.
func TestPublishReturnsWhenItsContextEndsInABlackHole(t *testing.T) {
	const wait, slack = 300 * time.Millisecond, 2 * time.Second
	for _, name := range []string{"activemq", "kafka", "nsq", "postgres", "rabbitmq"} {
		t.Run(name, func(t *testing.T) {
			p, c := proxied(t, name)
			t.Cleanup(func() { _ = c.Close() })
			topic := "prompt-" + name + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
			publish := func(d time.Duration) (time.Duration, error) {
				ctx, cancel := context.WithTimeout(context.Background(), d)
				defer cancel()
				start := time.Now()
				err := c.Publish(ctx, topic, &pubsub.Message{Key: "k", Payload: []byte("x")})
				return time.Since(start), err
			}
			if _, err := publish(time.Minute); err != nil {
				t.Fatalf("publish before the fault: %v", err)
			}
			heal := p.BlackHole()
			defer heal()
			took, err := publish(wait)
			if !errors.Is(err, context.DeadlineExceeded) || took > wait+slack {
				t.Errorf("publish into the black hole: %v after %v, want the context's error after %v", err, took.Round(time.Millisecond), wait)
			}
			p.Cut()
			var wg sync.WaitGroup
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					took, err := publish(wait)
					if !errors.Is(err, context.DeadlineExceeded) || took > wait+slack {
						t.Errorf("publish after a cut, into the black hole: %v after %v, want the context's error after %v", err, took.Round(time.Millisecond), wait)
					}
				}()
			}
			wg.Wait()
			heal()
			deadline := time.Now().Add(time.Minute)
			for {
				_, err := publish(15 * time.Second)
				if err == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("publishing did not recover within a minute after the black hole: %v", err)
				}
			}
		})
	}
}
