package faults_test

import (
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/rabbitmq"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/integration/faults"
	"github.com/omnibusmq/omnibus/pubsub"
)

// viaProxy starts a fault proxy to the broker of rawURL and returns the URL
// through it (with params appended).
func viaProxy(t *testing.T, rawURL, params string) (*faults.Proxy, string) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	p := faults.Start(t, u.Host)
	u.Host = p.Addr()
	s := u.String()
	if params != "" {
		if strings.Contains(s, "?") {
			s += "&" + params
		} else {
			s += "?" + params
		}
	}
	return p, s
}

// ledger counts what a fault test published and consumed.
type ledger struct {
	mu        sync.Mutex
	published map[string]bool // Publish returned nil
	failed    int             // messages whose Publish returned an error
	consumed  map[string]int
	dups      int
	allIn     chan struct{}
	done      bool // publishing finished
	mark      int  // closes marked when this many were published
	marked    chan struct{}

	faultAt     time.Time     // when the fault began (set by the test)
	recoveredAt time.Time     // the first Publish started after faultAt returned nil
	resumedAt   time.Time     // the first consume after faultAt
	lastAt      time.Time     // the last consume
	maxGap      time.Duration // the longest wait between two consumes
}

func newLedger() *ledger {
	return &ledger{published: map[string]bool{}, consumed: map[string]int{}, allIn: make(chan struct{}), marked: make(chan struct{})}
}

func (l *ledger) check() { // l.mu held
	if !l.done {
		return
	}
	for id := range l.published {
		if l.consumed[id] == 0 {
			return
		}
	}
	select {
	case <-l.allIn:
	default:
		close(l.allIn)
	}
}

func (l *ledger) publishDone() {
	l.mu.Lock()
	l.done = true
	l.check()
	l.mu.Unlock()
}

func (l *ledger) consume(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if !l.lastAt.IsZero() && now.Sub(l.lastAt) > l.maxGap {
		l.maxGap = now.Sub(l.lastAt)
	}
	l.lastAt = now
	if !l.faultAt.IsZero() && l.resumedAt.IsZero() && now.After(l.faultAt) {
		l.resumedAt = now
	}
	l.consumed[id]++
	if l.consumed[id] > 1 {
		l.dups++
	}
	if l.done && l.published[id] {
		l.check()
	}
}

func (l *ledger) lost() (n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id := range l.published {
		if l.consumed[id] == 0 {
			n++
		}
	}
	return n
}

func consumeAll(ctx context.Context, sub *pubsub.Subscription, l *ledger) {
	for {
		d, err := sub.Receive(ctx)
		if err != nil {
			return
		}
		l.consume(d.Message.ID)
		_ = d.Ack()
	}
}

// started is a client with a consumer of group "g" on a fresh topic that
// records every delivery in l.
type started struct {
	c     *pubsub.Client
	ctx   context.Context
	topic string
	l     *ledger
}

// start opens u, subscribes group "g" to a fresh topic named after prefix
// and consumes into a new ledger until the test (bounded by d) ends.
func start(t *testing.T, u, prefix string, d time.Duration) *started {
	t.Helper()
	c, err := pubsub.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	return startClient(t, c, prefix, d)
}

// startClient is start with a client the test opened itself; the client
// is closed when the test ends.
func startClient(t *testing.T, c *pubsub.Client, prefix string, d time.Duration) *started {
	t.Helper()
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	s := &started{c: c, ctx: ctx, topic: fmt.Sprintf("omnibus-faults-%s-%d", prefix, time.Now().UnixNano()), l: newLedger()}
	sub, err := c.Subscribe(ctx, s.topic, pubsub.Group("g"))
	if err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); consumeAll(cctx, sub, s.l) }()
	t.Cleanup(func() { stop(); <-done; _ = sub.Close() }) // runs before the client's Close
	return s
}

// publishPastAQuarter publishes total keyed messages in the background
// (calls of 50 from 4 goroutines) and returns once a quarter of them are
// confirmed; done closes when publishing ends and maxCall holds the longest
// Publish call. It fails the test if publishing ends before the fault.
func (r *started) publishPastAQuarter(t *testing.T, total int, fault string) (done chan struct{}, maxCall *atomic.Int64) {
	t.Helper()
	r.l.mu.Lock()
	r.l.mark = total / 4
	r.l.mu.Unlock()
	done, maxCall = make(chan struct{}), new(atomic.Int64)
	go func() {
		defer close(done)
		publishAll(r.ctx, r.c, r.topic, total, 50, 4, r.l, maxCall)
	}()
	select {
	case <-r.l.marked:
	case <-done:
		t.Fatalf("publishing ended before %s", fault)
	}
	return done, maxCall
}

// blackHoleForTwoSeconds publishes total keyed messages (see
// publishPastAQuarter), black-holes f for 2 s once a quarter of them are
// confirmed, and returns once publishing ended and every confirmed message
// was consumed (or the test's time ran out): the longest Publish call, the
// time from the start of the hole until then, and the messages confirmed
// and never consumed.
func (r *started) blackHoleForTwoSeconds(t *testing.T, f fault, total int) (longest, recovered time.Duration, lost int) {
	t.Helper()
	pubDone, maxCall := r.publishPastAQuarter(t, total, "the black hole")
	began := time.Now()
	heal := f.BlackHole()
	time.Sleep(2 * time.Second) // the fault's duration
	heal()
	<-pubDone
	r.l.publishDone()
	select {
	case <-r.l.allIn:
	case <-r.ctx.Done():
	}
	return time.Duration(maxCall.Load()), time.Since(began), r.l.lost()
}

// publishAll publishes n messages in calls of batch from workers goroutines
// and records each call's outcome; maxCall is the longest call seen.
func publishAll(ctx context.Context, c *pubsub.Client, topic string, n, batch, workers int, l *ledger, maxCall *atomic.Int64) {
	publishPaced(ctx, c, topic, n, batch, workers, 0, l, maxCall)
}

// publishPaced is publishAll starting at most one call every interval
// (0: as fast as the broker takes them), so that a run lasts long enough
// for the faults it is meant to span.
func publishPaced(ctx context.Context, c *pubsub.Client, topic string, n, batch, workers int, every time.Duration, l *ledger, maxCall *atomic.Int64) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var pace <-chan time.Time
	if every > 0 {
		tick := time.NewTicker(every)
		defer tick.Stop()
		pace = tick.C
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if pace != nil {
					select {
					case <-pace:
					case <-ctx.Done():
						return
					}
				}
				from := int(next.Add(int64(batch))) - batch
				if from >= n || ctx.Err() != nil {
					return
				}
				msgs := make([]*pubsub.Message, 0, batch)
				for i := from; i < min(from+batch, n); i++ {
					msgs = append(msgs, &pubsub.Message{ID: fmt.Sprintf("m%06d", i), Key: fmt.Sprintf("k%d", i%64), Payload: []byte("x")})
				}
				start := time.Now()
				err := c.Publish(ctx, topic, msgs...)
				took := time.Since(start)
				for {
					old := maxCall.Load()
					if int64(took) <= old || maxCall.CompareAndSwap(old, int64(took)) {
						break
					}
				}
				l.mu.Lock()
				if err == nil {
					for _, m := range msgs {
						l.published[m.ID] = true
					}
					if !l.faultAt.IsZero() && start.After(l.faultAt) && l.recoveredAt.IsZero() {
						l.recoveredAt = time.Now()
					}
					if l.mark > 0 && len(l.published) >= l.mark {
						l.mark = 0
						close(l.marked)
					}
				} else {
					l.failed += len(msgs)
				}
				l.mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// Every connection (publish and consume) is cut every 2 s while 50 000
// messages are published (paced, so that the run spans at least two cuts)
// and consumed: every message whose Publish returned nil must be consumed.
func TestRabbitMQConnectionsCutEveryTwoSecondsLoseNothing(t *testing.T) {
	p, u := viaProxy(t, integration.AMQP(t), "reconnect_min=50ms&reconnect_max=1s")
	r := start(t, u, "cut", 5*time.Minute)
	c, ctx, topic, l := r.c, r.ctx, r.topic, r.l

	const total = 50000
	began := time.Now()
	cuts := 0
	stopCuts := make(chan struct{})
	cutsDone := make(chan struct{})
	go func() {
		defer close(cutsDone)
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				p.Cut()
				cuts++
			case <-stopCuts:
				return
			}
		}
	}()
	var maxCall atomic.Int64
	// At most 10 000 messages a second: the run lasts at least 5 s, two
	// cuts, however fast the broker takes them.
	publishPaced(ctx, c, topic, total, 100, 8, 10*time.Millisecond, l, &maxCall)
	l.publishDone()
	select {
	case <-l.allIn:
	case <-ctx.Done():
	}
	close(stopCuts)
	<-cutsDone
	took := time.Since(began)
	lost := l.lost()
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("%d messages in %v with %d cuts (%d reconnects): published ok %d, failed %d, consumed distinct %d, lost %d, duplicates %d, longest Publish %v",
		total, took.Round(time.Millisecond), cuts, c.Driver().(*rabbitmq.Broker).Reconnects(), len(l.published), l.failed, len(l.consumed), lost, l.dups,
		time.Duration(maxCall.Load()).Round(time.Millisecond))
	if cuts < 2 {
		t.Errorf("%d cuts during the run, want at least 2", cuts)
	}
	if lost > 0 {
		t.Errorf("%d messages whose Publish returned nil were never consumed", lost)
	}
}

// A 2 s black hole (both directions, connections left open) during
// publishing: every Publish returns (nil or an error) within the publish
// timeout, and every message whose Publish returned nil is consumed.
func TestRabbitMQBlackHoleOfTwoSecondsHangsNothingAndLosesNothing(t *testing.T) {
	const publishTimeout = 4 * time.Second
	p, u := viaProxy(t, integration.AMQP(t), fmt.Sprintf("publish_timeout=%v&heartbeat=1s&reconnect_min=50ms&reconnect_max=1s&connection_timeout=2s", publishTimeout))
	r := start(t, u, "blackhole", 3*time.Minute)
	c, l := r.c, r.l

	const total = 20000
	longest, recovered, lost := r.blackHoleForTwoSeconds(t, p, total)
	l.mu.Lock()
	defer l.mu.Unlock()
	t.Logf("%d messages, 2 s black hole: published ok %d, failed %d, consumed distinct %d, lost %d, duplicates %d, longest Publish %v (publish_timeout %v), %d reconnects, all consumed %v after the hole began",
		total, len(l.published), l.failed, len(l.consumed), lost, l.dups, longest.Round(time.Millisecond), publishTimeout,
		c.Driver().(*rabbitmq.Broker).Reconnects(), recovered.Round(time.Millisecond))
	if lost > 0 {
		t.Errorf("%d messages whose Publish returned nil were never consumed", lost)
	}
	if longest > publishTimeout+2*time.Second {
		t.Errorf("a Publish took %v, past the publish timeout %v", longest, publishTimeout)
	}
}

// The node holding a quorum queue's leader is SIGKILLed while keyed
// messages are published and consumed through a URL listing the three
// nodes: every message whose Publish returned nil is consumed; duplicates
// and the times to recover are reported.
func TestRabbitMQClusterLeaderKilledLosesNothing(t *testing.T) {
	urls, ctl := integration.AMQPCluster(t)
	var hosts []string
	var first *url.URL
	for _, s := range urls {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = u
		}
		hosts = append(hosts, u.Host)
	}
	all := *first
	all.Host = strings.Join(hosts, ",")
	u := all.String() + "?reconnect_min=50ms&reconnect_max=1s&heartbeat=2s&publish_timeout=60s&connection_timeout=5s"
	r := start(t, u, "leader", 4*time.Minute)
	c, ctx, topic, l := r.c, r.ctx, r.topic, r.l
	queue := rabbitmq.QueueName(topic, "g")
	run := func(args ...string) string {
		t.Helper()
		cctx, ccancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer ccancel()
		out, err := exec.CommandContext(cctx, ctl, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", ctl, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	leader := run("leader", queue)
	t.Logf("queue %s: leader on node %s", queue, leader)

	const total = 20000
	pubDone, maxCall := r.publishPastAQuarter(t, total, "the kill")
	l.mu.Lock()
	l.faultAt = time.Now()
	l.mu.Unlock()
	run("kill", leader)
	t.Cleanup(func() { run("start", leader) })
	<-pubDone
	l.publishDone()
	select {
	case <-l.allIn:
	case <-ctx.Done():
	}
	newLeader := run("leader", queue)
	lost := l.lost()
	l.mu.Lock()
	defer l.mu.Unlock()
	since := func(at time.Time) time.Duration {
		if at.IsZero() {
			return -1
		}
		return at.Sub(l.faultAt).Round(time.Millisecond)
	}
	t.Logf("%d keyed messages, leader node %s SIGKILLed after %d confirmed, new leader node %s: published ok %d, failed %d, consumed distinct %d, lost %d, duplicates %d, %d reconnects; first Publish started after the kill confirmed %v after it, first delivery %v after it; longest consume gap %v; longest Publish %v",
		total, leader, total/4, newLeader, len(l.published), l.failed, len(l.consumed), lost, l.dups,
		c.Driver().(*rabbitmq.Broker).Reconnects(), since(l.recoveredAt), since(l.resumedAt), l.maxGap.Round(time.Millisecond),
		time.Duration(maxCall.Load()).Round(time.Millisecond))
	if lost > 0 {
		t.Errorf("%d messages whose Publish returned nil were never consumed", lost)
	}
	if newLeader == leader {
		t.Errorf("the leader is still on node %s", leader)
	}
}
