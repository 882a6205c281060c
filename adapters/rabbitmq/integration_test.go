package rabbitmq_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/rabbitmq"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

// EnvCtl names the rabbitmqctl wrapper written by `scripts/brokers up
// rabbitmq`; the restart test uses it to stop and start the broker.
const EnvCtl = "OMNIBUS_AMQP_CTL"

// withParams appends query parameters to a broker URL.
func withParams(base, params string) string {
	if params == "" {
		return base
	}
	if strings.Contains(base, "?") {
		return base + "&" + params
	}
	return base + "?" + params
}

var uniq atomic.Int64

func topicName(t *testing.T) string {
	return fmt.Sprintf("omnibus-it-%s-%d-%d", strings.NewReplacer("/", "-", " ", "_").Replace(t.Name()), time.Now().UnixNano()%1e9, uniq.Add(1))
}

func openClient(t *testing.T, url string) *pubsub.Client {
	t.Helper()
	c, err := pubsub.Open(context.Background(), url)
	if err != nil {
		t.Fatalf("open %s: %v", pubsub.Redact(url), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestConformance(t *testing.T) {
	base := integration.AMQP(t)
	// partitions=2 runs the suite on partitioned groups (per-key order
	// claimed, single active consumers).
	for _, qt := range []string{rabbitmq.QueueQuorum, rabbitmq.QueueClassic, "quorum&partitions=2"} {
		t.Run(qt, func(t *testing.T) {
			url := withParams(base, "queue_type="+qt)
			qt := strings.NewReplacer("&", "-", "=", "").Replace(qt)
			pubsubtest.Run(t, pubsubtest.Harness{
				Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
					return pubsub.Open(ctx, url)
				},
				// A fresh topic (exchange) per test.
				NewTopic: func(ctx context.Context, t *testing.T, base string) string {
					return base + "-" + qt
				},
				Wait: 30 * time.Second,
			})
		})
	}
}

func TestNackWithTwoSecondDelayRedeliversNoSoonerThanTwoSeconds(t *testing.T) {
	base := integration.AMQP(t)
	for _, qt := range []string{rabbitmq.QueueQuorum, rabbitmq.QueueClassic} {
		t.Run(qt, func(t *testing.T) {
			ctx := context.Background()
			c := openClient(t, withParams(base, "queue_type="+qt))
			topic := topicName(t)
			s, err := c.Subscribe(ctx, topic, pubsub.Group("delay"))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			m := &pubsub.Message{Key: "k", Payload: []byte("later"), Metadata: map[string]string{"h": "v"}}
			if err := c.Publish(ctx, topic, m); err != nil {
				t.Fatal(err)
			}
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			d, err := s.Receive(rctx)
			if err != nil {
				t.Fatal(err)
			}
			const delay = 2 * time.Second
			nackedAt := time.Now()
			if err := d.Nack(delay); err != nil {
				t.Fatal(err)
			}
			d2, err := s.Receive(rctx)
			if err != nil {
				t.Fatalf("no redelivery within 30s of a %v nack: %v", delay, err)
			}
			elapsed := time.Since(nackedAt)
			if err := d2.Ack(); err != nil {
				t.Fatal(err)
			}
			if d2.Message.ID != m.ID || d2.Message.Key != "k" || d2.Message.Metadata["h"] != "v" || string(d2.Message.Payload) != "later" {
				t.Fatalf("redelivered %+v, want message %s intact", d2.Message, m.ID)
			}
			if elapsed < delay {
				t.Errorf("redelivered %v after the nack, sooner than its %v delay", elapsed, delay)
			}
			if d2.Message.Attempt != 2 {
				t.Errorf("Attempt = %d after one nack, want 2", d2.Message.Attempt)
			}
			t.Logf("redelivered after %v", elapsed.Round(time.Millisecond))
		})
	}
}

func TestPublishWithNoQueueBoundFollowsTheUnroutableRule(t *testing.T) {
	base := integration.AMQP(t)
	ctx := context.Background()

	t.Run("DefaultIsAnErrorNamingTheMessage", func(t *testing.T) {
		c := openClient(t, base)
		topic := topicName(t)
		m := &pubsub.Message{ID: "lonely-1", Payload: []byte("x")}
		err := c.Publish(ctx, topic, &pubsub.Message{ID: "routed-0"}, m)
		if !errors.Is(err, pubsub.ErrNotFound) {
			t.Fatalf("Publish with no queue bound: %v, want ErrNotFound", err)
		}
		if !strings.Contains(err.Error(), `"routed-0"`) && !strings.Contains(err.Error(), `"lonely-1"`) {
			t.Errorf("error %q names no message", err)
		}
		// Once a group is subscribed the same publish succeeds.
		s, err := c.Subscribe(ctx, topic, pubsub.Group("late"))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if err := c.Publish(ctx, topic, &pubsub.Message{ID: "routed-1"}); err != nil {
			t.Fatalf("Publish after a group subscribed: %v", err)
		}
	})

	t.Run("GroupsParamDeclaresQueuesUpFront", func(t *testing.T) {
		url := withParams(base, "groups=billing,audit")
		pubc := openClient(t, url)
		topic := topicName(t)
		m := &pubsub.Message{Payload: []byte("before any consumer")}
		if err := pubc.Publish(ctx, topic, m); err != nil {
			t.Fatalf("Publish with groups= and no consumer: %v", err)
		}
		subc := openClient(t, base)
		for _, g := range []string{"billing", "audit"} {
			s, err := subc.Subscribe(ctx, topic, pubsub.Group(g))
			if err != nil {
				t.Fatal(err)
			}
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			d, err := s.Receive(rctx)
			cancel()
			if err != nil {
				t.Fatalf("group %s: the message published before it subscribed was not kept: %v", g, err)
			}
			if d.Message.ID != m.ID {
				t.Errorf("group %s got %s, want %s", g, d.Message.ID, m.ID)
			}
			_ = d.Ack()
			_ = s.Close()
		}
	})

	t.Run("DropIsAnExplicitOptIn", func(t *testing.T) {
		c := openClient(t, withParams(base, "unroutable=drop"))
		topic := topicName(t)
		dropped := &pubsub.Message{Payload: []byte("nobody listens")}
		if err := c.Publish(ctx, topic, dropped); err != nil {
			t.Fatalf("Publish with unroutable=drop: %v, want nil (the broker drops it)", err)
		}
		s, err := c.Subscribe(ctx, topic, pubsub.Group("after"))
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		kept := &pubsub.Message{Payload: []byte("someone listens")}
		if err := c.Publish(ctx, topic, kept); err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		d, err := s.Receive(rctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = d.Ack()
		if d.Message.ID != kept.ID {
			t.Fatalf("first delivery %s, want %s: the unroutable message should have been dropped", d.Message.ID, kept.ID)
		}
	})
}

// recorder is a slog.Handler that keeps every record's message.
type recorder struct {
	mu   sync.Mutex
	msgs []string
	t    *testing.T
}

func (r *recorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	rec.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	r.mu.Lock()
	r.msgs = append(r.msgs, rec.Message)
	r.mu.Unlock()
	r.t.Logf("slog %s %s%s", rec.Level, rec.Message, b.String())
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }
func (r *recorder) count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.msgs {
		if strings.Contains(m, msg) {
			n++
		}
	}
	return n
}

// ctl runs the broker's rabbitmqctl wrapper.
func ctl(t *testing.T, args ...string) {
	t.Helper()
	path := os.Getenv(EnvCtl)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", path, strings.Join(args, " "), err, out)
	}
	t.Logf("%s %s: %s", path, strings.Join(args, " "), strings.TrimSpace(string(out)))
}

func TestBrokerRestartMidStreamDeliversEveryMessageAndReconnects(t *testing.T) {
	base := integration.AMQP(t)
	if os.Getenv(EnvCtl) == "" {
		msg := fmt.Sprintf("%s is not set: start the broker with `eval \"$(scripts/brokers up rabbitmq)\"` so the test can restart it", EnvCtl)
		if integration.InCI() {
			t.Fatal("CI=true and " + msg)
		}
		t.Skip("SKIPPED, " + msg)
	}
	ctx := context.Background()
	rec := &recorder{t: t}
	addr, opts, err := rabbitmq.ParseURL(withParams(base, "publish_timeout=2m&reconnect_max=1s"))
	if err != nil {
		t.Fatal(err)
	}
	opts.Logger = slog.New(rec)
	drv, err := rabbitmq.Dial(ctx, addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	c := pubsub.NewClient(drv, pubsub.WithLogger(slog.New(rec)))
	defer c.Close()

	topic := topicName(t)
	s, err := c.Subscribe(ctx, topic, pubsub.Group("restart"), pubsub.Prefetch(256))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Make sure the broker is up again whatever happens below.
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			ctl(t, "start_app")
		}
	})

	const total, batch = 20000, 100
	var mu sync.Mutex
	seen := make(map[string]int, total)
	halfway := make(chan struct{})
	all := make(chan struct{})
	published := make(chan []string, total/batch)

	rctx, stopReceive := context.WithTimeout(ctx, 5*time.Minute)
	defer stopReceive()
	recvDone := make(chan error, 1)
	go func() {
		var once, allOnce sync.Once
		for {
			d, err := s.Receive(rctx)
			if err != nil {
				recvDone <- err
				return
			}
			if err := d.Ack(); err != nil {
				t.Errorf("ack: %v", err)
			}
			mu.Lock()
			seen[d.Message.ID]++
			n := len(seen)
			mu.Unlock()
			if n >= total/10 {
				once.Do(func() { close(halfway) })
			}
			if n >= total {
				allOnce.Do(func() { close(all) })
			}
		}
	}()

	// The publisher runs the whole time: a first part before the restart,
	// then on (with calls in flight when the connection drops, and calls
	// blocked while the broker is down) until the restart is over or only a
	// reserve is left, then the reserve on the new connections.
	var publishErrs, sent atomic.Int64
	restartDone := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		defer close(published)
		next := 0
		publishBatch := func() bool {
			msgs := make([]*pubsub.Message, batch)
			ids := make([]string, batch)
			for j := range msgs {
				msgs[j] = &pubsub.Message{Key: "k" + strconv.Itoa(j%8), Payload: []byte(strconv.Itoa(next + j))}
			}
			// Retry a failed call with the same IDs, as a service would:
			// the error means "not known to be stored", never "lost".
			for attempt := 1; ; attempt++ {
				err := c.Publish(ctx, topic, msgs...)
				if err == nil {
					break
				}
				publishErrs.Add(1)
				t.Logf("publish of messages %d..%d failed (attempt %d), retrying: %v", next, next+batch-1, attempt, err)
				if attempt == 10 {
					t.Errorf("publish of messages %d..%d failed 10 times: %v", next, next+batch-1, err)
					return false
				}
			}
			for j, m := range msgs {
				ids[j] = m.ID
			}
			published <- ids
			next += batch
			sent.Store(int64(next))
			return true
		}
		for next < total-2000 {
			select {
			case <-restartDone:
			default:
				if !publishBatch() {
					return
				}
				continue
			}
			break
		}
		<-restartDone
		for next < total {
			if !publishBatch() {
				return
			}
		}
	}()

	select {
	case <-halfway:
	case err := <-recvDone:
		t.Fatalf("receive ended before a tenth of the messages arrived: %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("a tenth of the messages did not arrive within 2 minutes")
	}
	t.Logf("stopping the broker with %d messages published, %d received", sent.Load(), func() int { mu.Lock(); defer mu.Unlock(); return len(seen) }())
	ctl(t, "stop_app")
	t.Logf("broker stopped with %d messages published", sent.Load())
	ctl(t, "start_app")
	restarted = true
	close(restartDone)

	select {
	case <-pubDone:
	case <-time.After(4 * time.Minute):
		t.Fatal("publishing did not finish within 4 minutes of the restart")
	}
	var want []string
	for ids := range published {
		want = append(want, ids...)
	}
	if len(want) != total {
		t.Fatalf("only %d of %d messages were published", len(want), total)
	}
	select {
	case <-all:
	case err := <-recvDone:
		t.Fatalf("receive ended: %v", err)
	case <-time.After(4 * time.Minute):
	}
	mu.Lock()
	missing, dups := 0, 0
	for _, id := range want {
		switch n := seen[id]; {
		case n == 0:
			missing++
		case n > 1:
			dups++
		}
	}
	got := len(seen)
	mu.Unlock()
	if missing > 0 {
		t.Errorf("%d of %d published messages were never delivered after the restart", missing, total)
	}
	if got != total {
		t.Errorf("received %d distinct IDs, want %d", got, total)
	}
	if n := drv.Reconnects(); n < 2 {
		t.Errorf("Reconnects() = %d, want at least 2 (the publish and the consume connection)", n)
	}
	if n := rec.count("reconnected"); n < 2 {
		t.Errorf("%d reconnect log records, want at least 2", n)
	}
	t.Logf("%d messages, %d redelivered (at-least-once), %d publish calls failed and were retried, %d reconnects", total, dups, publishErrs.Load(), drv.Reconnects())
}

// The adapter builds each publishing just before sending it, reusing one
// header table per channel: every message must still arrive with exactly
// its own key and metadata, whatever the messages before it carried.
func TestEveryMessageOfABatchKeepsItsOwnKeyAndMetadata(t *testing.T) {
	base := integration.AMQP(t)
	ctx := context.Background()
	c := openClient(t, withParams(base, "queue_type=classic"))
	topic := topicName(t)
	s, err := c.Subscribe(ctx, topic, pubsub.Group("headers"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 600 // over one confirm window
	msgs := make([]*pubsub.Message, n)
	for i := range msgs {
		m := &pubsub.Message{ID: fmt.Sprintf("m-%d", i), Payload: []byte(strconv.Itoa(i))}
		switch i % 4 {
		case 1:
			m.Key = "k" + strconv.Itoa(i)
		case 2:
			m.Metadata = map[string]string{"only-" + strconv.Itoa(i): "x", "shared": strconv.Itoa(i)}
		case 3:
			m.Key = "k" + strconv.Itoa(i)
			m.Metadata = map[string]string{"shared": strconv.Itoa(i)}
		}
		msgs[i] = m
	}
	if err := c.Publish(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for range n {
		d, err := s.Receive(rctx)
		if err != nil {
			t.Fatal(err)
		}
		i, err := strconv.Atoi(string(d.Message.Payload))
		if err != nil || i < 0 || i >= n {
			t.Fatalf("unexpected payload %q", d.Message.Payload)
		}
		want := msgs[i]
		got := d.Message
		if got.ID != want.ID || got.Key != want.Key || len(got.Metadata) != len(want.Metadata) {
			t.Fatalf("message %d arrived as id %q key %q metadata %v; want id %q key %q metadata %v", i, got.ID, got.Key, got.Metadata, want.ID, want.Key, want.Metadata)
		}
		for k, v := range want.Metadata {
			if got.Metadata[k] != v {
				t.Fatalf("message %d: metadata %v, want %v", i, got.Metadata, want.Metadata)
			}
		}
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
	}
}
