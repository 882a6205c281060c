package nsq_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
)

// TestHelperChildConsumer is not a test: TestConsumerKilledFiveTimes runs
// the test binary again with OMNIBUS_NSQ_CHILD set, and this function is
// the child, a member of the group that acks all but the last messages it
// receives and holds those until it is killed with SIGKILL.
func TestHelperChildConsumer(t *testing.T) {
	if os.Getenv("OMNIBUS_NSQ_CHILD") == "" {
		t.Skip("helper process for TestConsumerKilledFiveTimesInOneGroupLosesNothing")
	}
	fail := func(err error) {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	c, err := pubsub.Open(context.Background(), os.Getenv("OMNIBUS_NSQ_CHILD_URL"))
	if err != nil {
		fail(err)
	}
	s, err := c.Subscribe(context.Background(), os.Getenv("OMNIBUS_NSQ_CHILD_TOPIC"), pubsub.Group(os.Getenv("OMNIBUS_NSQ_CHILD_GROUP")))
	if err != nil {
		fail(err)
	}
	n, _ := strconv.Atoi(os.Getenv("OMNIBUS_NSQ_CHILD_N"))
	hold, _ := strconv.Atoi(os.Getenv("OMNIBUS_NSQ_CHILD_HOLD"))
	for i := 0; i < n; i++ {
		d, err := s.Receive(context.Background())
		if err != nil {
			fail(err)
		}
		if i < n-hold {
			if err := d.Ack(); err != nil {
				fail(err)
			}
			fmt.Println("ACK", d.Message.ID, d.Message.Attempt)
		} else {
			fmt.Println("HELD", d.Message.ID, d.Message.Attempt)
		}
	}
	fmt.Println("HOLDING")
	select {} // hold the messages until killed
}

// runChild starts a child consumer and returns what it printed once it
// holds its messages, and a function that SIGKILLs it.
func runChild(t *testing.T, url, topic, group string, n, hold int) (acked, held []string, kill func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperChildConsumer$", "-test.count=1")
	cmd.Env = append(os.Environ(), "OMNIBUS_NSQ_CHILD=1", "OMNIBUS_NSQ_CHILD_URL="+url,
		"OMNIBUS_NSQ_CHILD_TOPIC="+topic, "OMNIBUS_NSQ_CHILD_GROUP="+group,
		"OMNIBUS_NSQ_CHILD_N="+strconv.Itoa(n), "OMNIBUS_NSQ_CHILD_HOLD="+strconv.Itoa(hold))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	kill = func() {
		once.Do(func() {
			_ = cmd.Process.Kill() // SIGKILL
			_ = cmd.Wait()
		})
	}
	t.Cleanup(kill)
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("child exited before holding its messages")
			}
			f := strings.Fields(l)
			switch {
			case len(f) == 3 && f[0] == "ACK":
				acked = append(acked, f[1])
			case len(f) == 3 && f[0] == "HELD":
				held = append(held, f[1])
			case l == "HOLDING":
				go func() {
					for range lines {
					}
				}()
				return acked, held, kill
			case len(f) > 0 && f[0] == "ERR":
				t.Fatalf("child: %s", l)
			}
		case <-timeout:
			t.Fatal("child did not receive its messages within 60s")
		}
	}
}

// Five consumer processes of one group are killed with SIGKILL one after
// the other, each while holding unacked messages (and more in its RDY
// window). Nothing is lost: every message is delivered, and every message a
// killed consumer held comes back (nsqd redelivers it after msg_timeout).
func TestConsumerKilledFiveTimesInOneGroupLosesNothing(t *testing.T) {
	url := withParams(brokerEnv(t, envURL)[0], "msg_timeout", "2s")
	c := open(t, url)
	topic, group := topicName("kill5"), "g-kill5"
	// The group exists before anything is published.
	s0, err := c.Subscribe(context.Background(), topic, pubsub.Group(group))
	if err != nil {
		t.Fatal(err)
	}
	_ = s0.Close()
	const total, perChild, hold = 1000, 120, 5
	published := map[string]bool{}
	for i := 0; i < total; i += 100 {
		batch := make([]*pubsub.Message, 100)
		for j := range batch {
			batch[j] = &pubsub.Message{Key: fmt.Sprintf("k%d", (i+j)%7), Payload: []byte(strconv.Itoa(i + j))}
		}
		if err := c.Publish(context.Background(), topic, batch...); err != nil {
			t.Fatal(err)
		}
		for _, m := range batch {
			published[m.ID] = true
		}
	}
	seen := map[string]int{}
	var heldByKilled []string
	for round := 1; round <= 5; round++ {
		acked, held, kill := runChild(t, url, topic, group, perChild, hold)
		kill()
		for _, id := range append(acked, held...) {
			seen[id]++
		}
		heldByKilled = append(heldByKilled, held...)
		t.Logf("consumer %d: acked %d, held %d, killed with SIGKILL", round, len(acked), len(held))
	}
	// The survivor drains the group until every message was delivered and
	// every held one came back.
	s := subscribeGroup(t, c, topic, group)
	redelivered := map[string]bool{}
	missing := func() (lost, heldLost int) {
		for id := range published {
			if seen[id] == 0 {
				lost++
			}
		}
		for _, id := range heldByKilled {
			if !redelivered[id] {
				heldLost++
			}
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		lost, heldLost := missing()
		if lost == 0 && heldLost == 0 {
			break
		}
		d, err := s.Receive(ctx)
		if err != nil {
			t.Fatalf("after 5 kills: %d of %d messages never delivered, %d of %d held messages not redelivered (%v)",
				lost, total, heldLost, len(heldByKilled), err)
		}
		if !published[d.Message.ID] {
			t.Errorf("received %s, which was not published", d.Message.ID)
		}
		if seen[d.Message.ID] > 0 {
			redelivered[d.Message.ID] = true
			if d.Message.Attempt < 2 {
				t.Errorf("redelivery of %s has Attempt %d, want at least 2", d.Message.ID, d.Message.Attempt)
			}
		}
		seen[d.Message.ID]++
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	t.Logf("lost 0 of %d; %d held by killed consumers, all redelivered; %d deliveries beyond the first", total, len(heldByKilled), dups)
}

func subscribeGroup(t *testing.T, c *pubsub.Client, topic, group string) *pubsub.Subscription {
	t.Helper()
	s, err := c.Subscribe(context.Background(), topic, pubsub.Group(group))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// nsqd is stopped and started again twice while one goroutine publishes
// and another consumes, one message per Publish. nsqd runs with
// --mem-queue-size=0 --sync-every=1, and the consumer redials within
// lookupd_poll_interval.
//
// Stopped with SIGTERM, nsqd writes the messages in flight to disk: every
// publish that returned nil is delivered. Killed with SIGKILL, nsqd loses
// what only its memory held: the messages in flight to the consumer (at most
// max_in_flight) and a message it had acknowledged but whose disk queue
// position it had not yet synced (at most the one publish in flight); every
// other publish that returned nil is delivered.
func TestBrokerRestartDuringPublishAndConsume(t *testing.T) {
	const maxInFlight, restarts = 4, 2
	cases := []struct {
		name    string
		action  string // OMNIBUS_NSQ_CTL verb that stops nsqd
		lookupd bool   // the consumer finds nsqd again through lookupd, or redials it directly
		maxLost int
	}{
		{"SIGTERMLosesNothing", "stop", true, 0},
		{"SIGTERMWithoutLookupdLosesNothing", "stop", false, 0},
		{"SIGKILLLosesAtMostWhatWasInFlight", "kill", true, restarts * (maxInFlight + 1)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			restartDuringPublishAndConsume(t, tc.action, tc.lookupd, restarts, maxInFlight, tc.maxLost)
		})
	}
}

func restartDuringPublishAndConsume(t *testing.T, action string, lookupd bool, restarts, maxInFlight, maxLost int) {
	env := brokerEnv(t, envURL, envCtl)
	base := env[0]
	if !lookupd {
		base = withoutLookupd(t, base)
	}
	url := withParams(base, "durable", "true", "lookupd_poll_interval", "250ms", "publish_timeout", "20s",
		"msg_timeout", "5s", "max_in_flight", strconv.Itoa(maxInFlight))
	ctl := env[1]
	t.Cleanup(func() {
		// Leave nsqd running for the next test whatever happened.
		if out, err := exec.Command(ctl, "start").CombinedOutput(); err != nil {
			t.Errorf("%s start: %v: %s", ctl, err, out)
		}
	})
	c := open(t, url)
	topic, group := topicName("restart-"+action), "g-restart"
	s := subscribeGroup(t, c, topic, group)

	var mu sync.Mutex
	confirmed := map[string]bool{}
	index := map[string]int{} // message ID -> its place in the publish sequence
	received := map[string]int{}
	var failed int
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			d, err := s.Receive(ctx)
			if err != nil {
				return
			}
			mu.Lock()
			received[d.Message.ID]++
			mu.Unlock()
			_ = d.Ack()
		}
	})
	const total = 1500
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := 0; i < total; i++ {
			m := &pubsub.Message{Payload: []byte(strconv.Itoa(i))}
			pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
			err := c.Publish(pctx, topic, m)
			pcancel()
			mu.Lock()
			index[m.ID] = i
			if err == nil {
				confirmed[m.ID] = true
			} else {
				failed++
			}
			mu.Unlock()
		}
	}()
	counts := func() (confirmedN, receivedN int) {
		mu.Lock()
		defer mu.Unlock()
		return len(confirmed), len(received)
	}
	for r := 1; r <= restarts; r++ {
		for n, _ := counts(); n < r*total/(restarts+1); n, _ = counts() {
			select {
			case <-pubDone:
				t.Fatalf("publisher finished before restart %d", r)
			case <-time.After(20 * time.Millisecond): // polling the counter, not synchronising with nsqd
			}
		}
		if out, err := exec.Command(ctl, action).CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v: %s", ctl, action, err, out)
		}
		n, got := counts()
		t.Logf("nsqd stopped (%s) after %d confirmed publishes, %d received", action, n, got)
		if out, err := exec.Command(ctl, "start").CombinedOutput(); err != nil {
			t.Fatalf("%s start: %v: %s", ctl, err, out)
		}
	}
	<-pubDone
	// Wait until every confirmed message arrived, or until nothing new has
	// arrived for 20s (then the missing ones are lost).
	last, lastChange := -1, time.Now()
	for {
		mu.Lock()
		var missing []string
		for id := range confirmed {
			if received[id] == 0 {
				missing = append(missing, fmt.Sprintf("%s (#%d)", id, index[id]))
			}
		}
		nConfirmed, nFailed, nReceived := len(confirmed), failed, len(received)
		mu.Unlock()
		if nReceived != last {
			last, lastChange = nReceived, time.Now()
		}
		if len(missing) == 0 || time.Since(lastChange) > 20*time.Second {
			t.Logf("%d publishes returned nil, %d of them not delivered %v; %d publishes returned an error",
				nConfirmed, len(missing), missing, nFailed)
			if len(missing) > maxLost {
				t.Errorf("%d confirmed messages lost, want at most %d", len(missing), maxLost)
			}
			if nConfirmed < total/2 {
				t.Errorf("only %d of %d publishes succeeded", nConfirmed, total)
			}
			break
		}
		time.Sleep(100 * time.Millisecond) // polling the counters, not synchronising with nsqd
	}
	cancel()
	wg.Wait()
}
