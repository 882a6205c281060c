package activemq_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

// Environment of a consumer subprocess: the test binary re-executed by
// TestConsumerSIGKILLFiveTimesLosesNothingAndKeepsKeyOrder.
const (
	envChild      = "OMNIBUS_ACTIVEMQ_CHILD"
	envChildURL   = "OMNIBUS_ACTIVEMQ_CHILD_URL"
	envChildTopic = "OMNIBUS_ACTIVEMQ_CHILD_TOPIC"
	envChildGroup = "OMNIBUS_ACTIVEMQ_CHILD_GROUP"
)

func TestMain(m *testing.M) {
	pubsubtest.CrashMain()
	if os.Getenv(envChild) != "" {
		os.Exit(childConsumer())
	}
	os.Exit(m.Run())
}

// nackOnce reports whether the crash test's consumers nack this sequence
// number on its first delivery.
func nackOnce(seq int) bool { return seq%10 == 3 }

// childConsumer receives from the group until it is killed,
// printing "R id attempt" for every delivery and "A id" (flushed) right
// before it acks one. Messages nackOnce picks are nacked on attempt 1.
func childConsumer() int {
	ctx := context.Background()
	c, err := pubsub.Open(ctx, os.Getenv(envChildURL))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		return 2
	}
	defer c.Close()
	s, err := c.Subscribe(ctx, os.Getenv(envChildTopic), pubsub.Group(os.Getenv(envChildGroup)), pubsub.Prefetch(32))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child subscribe:", err)
		return 2
	}
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "READY")
	out.Flush()
	for {
		d, err := s.Receive(ctx)
		if err != nil {
			fmt.Fprintln(os.Stderr, "child receive:", err)
			out.Flush()
			return 2
		}
		seq, _ := strconv.Atoi(string(d.Message.Payload))
		fmt.Fprintf(out, "R %s %d\n", d.Message.ID, d.Message.Attempt)
		time.Sleep(time.Millisecond) // the work a handler does, so that kills land mid-stream
		if d.Message.Attempt == 1 && nackOnce(seq) {
			if err := d.Nack(0); err != nil {
				fmt.Fprintln(os.Stderr, "child nack:", err)
			}
			continue
		}
		// Report the message as processed before acking it: a SIGKILL
		// between the ack and the report would otherwise make a message
		// the broker saw acked look lost.
		fmt.Fprintf(out, "A %s\n", d.Message.ID)
		out.Flush()
		if err := d.Ack(); err != nil {
			fmt.Fprintln(os.Stderr, "child ack:", err)
		}
	}
}

// The portable crash kit: two consumer processes compete in a group that
// exists before the first publish (groups=crash); one is SIGKILLed five
// times mid-stream. Nothing is lost, and the kit checks per-key order of
// first effects because the adapter claims OrderingPerKey.
func TestCrashKit(t *testing.T) {
	eachFlavor(t, func(t *testing.T, f flavor) {
		rep := pubsubtest.RunCrash(t, pubsubtest.CrashOptions{
			URL:       withParams(f.url(t), "groups=crash"),
			Topic:     newTopic(t),
			Consumers: 2,
		})
		t.Logf("%s", rep)
	})
}

type receipt struct {
	id, key      string
	seq, attempt int
}

// child is one consumer subprocess and what it printed.
type child struct {
	cmd      *exec.Cmd
	mu       sync.Mutex
	receipts []receipt
	acked    int
	ready    chan struct{}
	done     chan struct{}
}

func TestConsumerSIGKILLFiveTimesLosesNothingAndKeepsKeyOrder(t *testing.T) {
	eachFlavor(t, testConsumerSIGKILL)
}

func testConsumerSIGKILL(t *testing.T, f flavor) {
	u := f.url(t)
	const keys, perKey, kills, consumers = 16, 125, 5, 2
	topic := newTopic(t)
	group := "crash"
	c := open(t, f, "groups="+group)
	var all []*pubsub.Message
	for i := 0; i < perKey; i++ {
		for k := 0; k < keys; k++ {
			all = append(all, &pubsub.Message{ID: fmt.Sprintf("m-%d-%d", k, i), Key: fmt.Sprintf("key-%d", k), Payload: []byte(strconv.Itoa(i))})
		}
	}
	for i := 0; i < len(all); i += 100 {
		if err := c.Publish(context.Background(), topic, all[i:min(i+100, len(all))]...); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}

	var mu sync.Mutex
	acked := map[string]bool{}
	var children []*child
	start := func() *child {
		ch := &child{ready: make(chan struct{}), done: make(chan struct{})}
		ch.cmd = exec.Command(os.Args[0], "-test.run=^$")
		ch.cmd.Env = append(os.Environ(), envChild+"=1", envChildURL+"="+u, envChildTopic+"="+topic, envChildGroup+"="+group)
		ch.cmd.Stderr = os.Stderr
		stdout, err := ch.cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() {
			defer close(ch.done)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				switch {
				case len(f) == 1 && f[0] == "READY":
					close(ch.ready)
				case len(f) == 3 && f[0] == "R":
					// The ID is m-<key>-<seq>: the key and sequence do not
					// depend on what the adapter delivers as Key.
					var k, seq int
					if _, err := fmt.Sscanf(f[1], "m-%d-%d", &k, &seq); err != nil {
						t.Errorf("unexpected message ID %q", f[1])
					}
					att, _ := strconv.Atoi(f[2])
					ch.mu.Lock()
					ch.receipts = append(ch.receipts, receipt{f[1], fmt.Sprintf("key-%d", k), seq, att})
					ch.mu.Unlock()
				case len(f) == 2 && f[0] == "A":
					ch.mu.Lock()
					ch.acked++
					ch.mu.Unlock()
					mu.Lock()
					acked[f[1]] = true
					mu.Unlock()
				}
			}
			_ = ch.cmd.Wait()
		}()
		children = append(children, ch)
		return ch
	}
	t.Cleanup(func() {
		for _, ch := range children {
			_ = ch.cmd.Process.Kill()
			<-ch.done
		}
	})
	deadline := time.Now().Add(time.Minute)
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			if time.Now().After(deadline) {
				mu.Lock()
				n := len(acked)
				var missing []string
				for _, m := range all {
					if !acked[m.ID] {
						missing = append(missing, m.ID)
					}
				}
				mu.Unlock()
				for _, id := range missing[:min(3, len(missing))] {
					for i, ch := range children {
						ch.mu.Lock()
						for _, r := range ch.receipts {
							if r.id == id {
								t.Logf("%s: received by consumer %d (exited: %v) on attempt %d", id, i, ch.cmd.ProcessState != nil, r.attempt)
							}
						}
						ch.mu.Unlock()
					}
				}
				t.Fatalf("timed out waiting for %s (%d of %d messages acked; missing %v)", what, n, len(all), missing[:min(10, len(missing))])
			}
			time.Sleep(10 * time.Millisecond) // polling the children's output
		}
	}
	var live []*child
	for i := 0; i < consumers; i++ {
		live = append(live, start())
	}
	for _, ch := range live {
		select {
		case <-ch.ready:
		case <-time.After(time.Until(deadline)):
			t.Fatal("consumer subprocess never subscribed")
		}
	}
	// Kill k happens once (k+1)/(kills+2) of the messages are acked, and
	// hits the live consumer that received the most: the one holding the
	// most keys, with deliveries in flight.
	step := len(all) / (kills + 2)
	for k := 0; k < kills; k++ {
		waitFor(fmt.Sprintf("kill %d: %d messages acked", k+1, (k+1)*step), func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(acked) >= (k+1)*step
		})
		vi := 0
		for i, ch := range live {
			ch.mu.Lock()
			n := len(ch.receipts)
			ch.mu.Unlock()
			live[vi].mu.Lock()
			m := len(live[vi].receipts)
			live[vi].mu.Unlock()
			if n > m {
				vi = i
			}
		}
		victim := live[vi]
		if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatalf("SIGKILL: %v", err)
		}
		<-victim.done
		next := start()
		<-next.ready
		live[vi] = next
	}
	mu.Lock()
	if len(acked) == len(all) {
		t.Errorf("every message was acked before the last kill: the kills did not interrupt consumption")
	}
	mu.Unlock()
	waitFor("every published message acked", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) == len(all)
	})
	var lost []string
	for _, m := range all {
		if !acked[m.ID] {
			lost = append(lost, m.ID)
		}
	}
	if len(lost) > 0 {
		t.Fatalf("%d messages lost after %d SIGKILLs: %v", len(lost), kills, lost[:min(10, len(lost))])
	}
	// Order per key: a key sticks to one consumer until that consumer dies
	// and never comes back to it, so within each consumer a key's first
	// deliveries (attempt 1) are consecutive sequence numbers: in publish
	// order, with none of them served by a competing consumer meanwhile.
	redelivered := 0
	for i, ch := range children {
		last := map[string]int{}
		for _, r := range ch.receipts {
			if r.attempt > 1 {
				redelivered++
				continue
			}
			if prev, ok := last[r.key]; ok && r.seq != prev+1 {
				t.Errorf("consumer %d: %s seq %d first delivered right after seq %d (order per key broken)", i, r.key, r.seq, prev)
			}
			last[r.key] = r.seq
		}
	}
	t.Logf("%d messages, %d consumer processes (%d SIGKILLed), %d redeliveries, 0 lost", len(all), len(children), kills, redelivered)
}
