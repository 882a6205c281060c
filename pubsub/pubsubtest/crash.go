package pubsubtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

// The crash kit runs consumers as subprocesses (the test binary re-executed),
// SIGKILLs them mid-stream, restarts them in the same group, drains, and
// counts what a user would see: messages lost, handler effects duplicated,
// and per-key first effects out of order.
//
// An adapter's test package wires it with a TestMain that lets the
// re-executed binary become a consumer, and a test that runs it:
//
//	func TestMain(m *testing.M) { pubsubtest.CrashMain(); os.Exit(m.Run()) }
//
//	func TestCrash(t *testing.T) {
//		pubsubtest.RunCrash(t, pubsubtest.CrashOptions{URL: url, Topic: topic})
//	}
//
// The consumer opens URL with pubsub.Open (so the adapter must be registered
// in the test binary, as importing it does), runs a router handler with
// router.OrderedByKey, and reports each effect on its standard output before
// the handler returns (so before the ack): an effect reported by a consumer
// that was killed before its ack counts as a duplicate when the message is
// redelivered, exactly as a user's side effect would.

const (
	envCrashChild = "OMNIBUS_CRASH_CHILD" // set in a consumer subprocess: its configuration
	effectPrefix  = "omnibus-effect "
	readyLine     = "omnibus-consumer-ready"
)

// CrashMiddleware builds the middleware a crash-kit consumer runs its handler
// behind (outermost first). Register it under a name with
// RegisterCrashMiddleware in an init function of the test package, so that the
// re-executed consumer has it too, and name it in CrashOptions.Middleware.
type CrashMiddleware func(ctx context.Context, client *pubsub.Client) ([]router.Layer, error)

var crashMiddleware = map[string]CrashMiddleware{}

// RegisterCrashMiddleware makes mw available to crash-kit consumers as name.
func RegisterCrashMiddleware(name string, mw CrashMiddleware) { crashMiddleware[name] = mw }

// CrashOptions configures RunCrash.
type CrashOptions struct {
	// URL is the broker URL every consumer opens with pubsub.Open; the
	// publisher too unless Publisher is set.
	URL string
	// Topic to publish to and consume from (created by the caller where
	// the broker needs that). Group is the consumers' group; default
	// "crash".
	Topic, Group string
	// FromOldest starts the consumers' new group at the oldest retained
	// message (pubsub.FromOldest), for log-based brokers.
	FromOldest bool
	// Messages, Keys: how many messages, spread over how many keys
	// (default 2000 over 16).
	Messages, Keys int
	// Kills is how many times a consumer is SIGKILLed mid-stream (default 5).
	Kills int
	// Consumers is how many compete in the group at once (default 1); with
	// more, kills alternate between them.
	Consumers int
	// Middleware names a RegisterCrashMiddleware entry the consumers use
	// (e.g. a Dedup or inbox middleware); empty means none.
	Middleware string
	// Concurrency of the consumers' ordered handler (default 8).
	Concurrency int
	// Wait is how long the kit waits for the next effect (or a consumer to
	// start) before it fails: a bound on a stall, not on the whole run
	// (default 1 minute). Keep it above the broker's redelivery time for a
	// dead consumer's messages (e.g. Postgres visibility_timeout).
	Wait time.Duration
}

// CrashReport is what RunCrash counted.
type CrashReport struct {
	Published       int // messages published (each Publish returned nil)
	Effects         int // handler effects reported, duplicates included
	Lost            int // published, never handled
	Duplicates      int // effects beyond the first of a message
	OrderViolations int // first effects that came before an earlier message of their key
	Kills           int // consumers SIGKILLed
}

func (r CrashReport) String() string {
	return fmt.Sprintf("published=%d effects=%d lost=%d duplicates=%d order_violations=%d kills=%d",
		r.Published, r.Effects, r.Lost, r.Duplicates, r.OrderViolations, r.Kills)
}

type childConfig struct {
	URL, Topic, Group, Middleware string
	FromOldest                    bool
	Concurrency                   int
}

func (c childConfig) encode() string {
	return strings.Join([]string{c.URL, c.Topic, c.Group, c.Middleware, strconv.FormatBool(c.FromOldest), strconv.Itoa(c.Concurrency)}, "\x1f")
}

func decodeChild(s string) (childConfig, error) {
	f := strings.Split(s, "\x1f")
	if len(f) != 6 {
		return childConfig{}, fmt.Errorf("pubsubtest: bad %s", envCrashChild)
	}
	old, err := strconv.ParseBool(f[4])
	if err != nil {
		return childConfig{}, err
	}
	n, err := strconv.Atoi(f[5])
	if err != nil {
		return childConfig{}, err
	}
	return childConfig{URL: f[0], Topic: f[1], Group: f[2], Middleware: f[3], FromOldest: old, Concurrency: n}, nil
}

// CrashMain turns a re-executed test binary into a crash-kit consumer and
// never returns in that case; otherwise it returns at once. Call it first
// in TestMain.
func CrashMain() {
	cfg := os.Getenv(envCrashChild)
	if cfg == "" {
		return
	}
	if err := runChild(cfg); err != nil {
		fmt.Fprintln(os.Stderr, "crash-kit consumer:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func runChild(raw string) error {
	cfg, err := decodeChild(raw)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	c, err := pubsub.Open(ctx, cfg.URL)
	if err != nil {
		return err
	}
	defer c.Close()
	r := router.New(c, router.Options{NackDelay: 10 * time.Millisecond, ShutdownTimeout: 10 * time.Second})
	if cfg.Middleware != "" {
		mk, ok := crashMiddleware[cfg.Middleware]
		if !ok {
			return fmt.Errorf("no crash middleware %q registered", cfg.Middleware)
		}
		mws, err := mk(ctx, c)
		if err != nil {
			return err
		}
		r.Use(mws...)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	opts := []router.HandlerOption{router.OrderedByKey(), router.Concurrency(cfg.Concurrency)}
	if cfg.FromOldest {
		opts = append(opts, router.Subscribe(pubsub.FromOldest()))
	}
	r.Handle(cfg.Topic, cfg.Group, func(ctx context.Context, m *pubsub.Message) error {
		mu.Lock()
		defer mu.Unlock()
		// One write per effect, flushed before the ack: what the parent
		// read is what took effect.
		fmt.Fprintf(out, "%s%s %s %s\n", effectPrefix, m.ID, m.Key, m.Payload)
		return out.Flush()
	}, opts...)
	go func() {
		<-r.Running()
		mu.Lock()
		fmt.Fprintln(out, readyLine)
		_ = out.Flush()
		mu.Unlock()
	}()
	return r.Run(ctx)
}

type effect struct {
	id, key string
	seq     int
}

type consumer struct {
	cmd    *exec.Cmd
	ready  chan struct{}
	done   chan error
	exited bool
}

// RunCrash publishes opts.Messages keyed messages, runs consumer processes in
// opts.Group, SIGKILLs one opts.Kills times at evenly spread points of the
// stream (restarting it each time), then lets the consumers drain and stops
// them. It fails t when a message is lost, or when a key's first effects come
// out of order on a client whose Capabilities claim OrderingPerKey. It
// returns the figures for the caller to assert more (e.g. no duplicates with
// an inbox) and to report.
func RunCrash(t *testing.T, opts CrashOptions) CrashReport {
	t.Helper()
	opts = opts.withDefaults()
	ctx := context.Background()
	pub, err := pubsub.Open(ctx, opts.URL)
	if err != nil {
		t.Fatalf("crash kit: open the publisher: %v", err)
	}
	defer pub.Close()
	ordered := pub.Capabilities().OrderingPerKey

	effects := make(chan effect, 1024)
	cfg := childConfig{URL: opts.URL, Topic: opts.Topic, Group: opts.Group, Middleware: opts.Middleware, FromOldest: opts.FromOldest, Concurrency: opts.Concurrency}
	var rep CrashReport
	seen := map[string]int{}
	lastFirst := map[string]int{}
	record := func(e effect) {
		rep.Effects++
		seen[e.id]++
		if seen[e.id] > 1 {
			rep.Duplicates++
			return
		}
		if prev, ok := lastFirst[e.key]; ok && e.seq < prev {
			rep.OrderViolations++
			if rep.OrderViolations <= 5 {
				t.Logf("crash kit: key %s: first effect of #%d after #%d", e.key, e.seq, prev)
			}
		}
		lastFirst[e.key] = max(lastFirst[e.key], e.seq)
	}
	// wait returns c's exit, recording the effects every consumer reports
	// meanwhile (a consumer blocks on a full channel otherwise).
	wait := func(c *consumer) error {
		for {
			select {
			case e := <-effects:
				record(e)
			case err := <-c.done:
				c.exited = true
				return err
			}
		}
	}
	start := func() *consumer {
		c, err := startConsumer(cfg, effects)
		if err != nil {
			t.Fatalf("crash kit: start consumer: %v", err)
		}
		timeout := time.After(opts.Wait)
		for {
			select {
			case <-c.ready:
				return c
			case e := <-effects:
				record(e)
			case err := <-c.done:
				c.exited = true
				t.Fatalf("crash kit: consumer exited before it was ready: %v", err)
			case <-timeout:
				t.Fatalf("crash kit: consumer not ready after %v", opts.Wait)
			}
		}
	}
	consumers := make([]*consumer, opts.Consumers)
	for i := range consumers {
		consumers[i] = start()
	}
	defer func() {
		for _, c := range consumers {
			if c != nil && !c.exited {
				_ = c.cmd.Process.Kill()
				_ = wait(c)
			}
		}
	}()

	// Publish in chunks so that consumers are working while the rest
	// arrives; sequence numbers count per key.
	perKey := make([]int, opts.Keys)
	ids := make(map[string]effect, opts.Messages)
	const chunk = 100
	for sent := 0; sent < opts.Messages; sent += chunk {
		var msgs []*pubsub.Message
		for i := sent; i < min(sent+chunk, opts.Messages); i++ {
			k := i % opts.Keys
			m := &pubsub.Message{ID: fmt.Sprintf("%s-%d", opts.Topic, i), Key: "key-" + strconv.Itoa(k), Payload: []byte(strconv.Itoa(perKey[k]))}
			perKey[k]++
			msgs = append(msgs, m)
		}
		if err := pub.Publish(ctx, opts.Topic, msgs...); err != nil {
			t.Fatalf("crash kit: publish: %v", err)
		}
		for _, m := range msgs {
			seq, _ := strconv.Atoi(string(m.Payload))
			ids[m.ID] = effect{id: m.ID, key: m.Key, seq: seq}
		}
		rep.Published += len(msgs)
	}

	stall := time.NewTimer(opts.Wait)
	defer stall.Stop()
	next := func() {
		select {
		case e := <-effects:
			record(e)
			stall.Reset(opts.Wait)
		case <-stall.C:
			t.Fatalf("crash kit: no new effect within %v: %s", opts.Wait, rep)
		}
	}

	// Kill at evenly spread points of the stream, then drain.
	for k := 1; k <= opts.Kills; k++ {
		for len(seen) < k*opts.Messages/(opts.Kills+1) {
			next()
		}
		i := (k - 1) % len(consumers)
		if err := consumers[i].cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("crash kit: kill: %v", err)
		}
		_ = wait(consumers[i])
		rep.Kills++
		consumers[i] = start()
	}
	for len(seen) < len(ids) {
		next()
	}
	// Stop cleanly; effects reported while stopping still count.
	for _, c := range consumers {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, c := range consumers {
		if err := wait(c); err != nil {
			t.Errorf("crash kit: consumer did not stop cleanly: %v", err)
		}
	}
	for len(effects) > 0 { // every forwarder has ended: what is left is buffered
		record(<-effects)
	}
	for id := range ids {
		if seen[id] == 0 {
			rep.Lost++
		}
	}
	t.Logf("crash kit: %s (ordering per key claimed: %v)", rep, ordered)
	if rep.Lost > 0 {
		t.Errorf("crash kit: %d of %d messages lost", rep.Lost, rep.Published)
	}
	if ordered && rep.OrderViolations > 0 {
		t.Errorf("crash kit: %d per-key order violations of first effects on a broker that claims OrderingPerKey", rep.OrderViolations)
	}
	return rep
}

func (o CrashOptions) withDefaults() CrashOptions {
	if o.Group == "" {
		o.Group = "crash"
	}
	if o.Messages <= 0 {
		o.Messages = 2000
	}
	if o.Keys <= 0 {
		o.Keys = 16
	}
	if o.Kills <= 0 {
		o.Kills = 5
	}
	if o.Consumers <= 0 {
		o.Consumers = 1
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	if o.Wait <= 0 {
		o.Wait = time.Minute
	}
	return o
}

// startConsumer re-executes the test binary as a consumer and forwards the
// effects it reports. Effects of every consumer share one channel; the
// forwarding goroutine ends when the consumer's stdout closes, and done
// reports the process's exit after that.
func startConsumer(cfg childConfig, effects chan<- effect) (*consumer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envCrashChild+"="+cfg.encode())
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &consumer{cmd: cmd, ready: make(chan struct{}), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		readyOnce := sync.OnceFunc(func() { close(c.ready) })
		for sc.Scan() {
			line := sc.Text()
			if line == readyLine {
				readyOnce()
				continue
			}
			rest, ok := strings.CutPrefix(line, effectPrefix)
			if !ok {
				continue
			}
			f := strings.SplitN(rest, " ", 3)
			if len(f) != 3 {
				continue
			}
			seq, _ := strconv.Atoi(f[2])
			effects <- effect{id: f[0], key: f[1], seq: seq}
		}
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) && !ee.Exited() {
			err = nil // killed by our signal
		}
		c.done <- err
	}()
	return c, nil
}
