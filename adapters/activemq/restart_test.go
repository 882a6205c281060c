package activemq_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
)

// restartBroker SIGKILLs the test broker's JVM and starts it again on the
// same journal with scripts/brokers. It returns the old and new pids.
func restartBroker(t *testing.T, f flavor) (oldPID, newPID int) {
	t.Helper()
	pidfile := f.pidfile(t)
	readPID := func() int {
		b, err := os.ReadFile(pidfile)
		if err != nil {
			t.Fatalf("broker pidfile: %v", err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("broker pidfile %s: %v", pidfile, err)
		}
		return pid
	}
	oldPID = readPID()
	if err := syscall.Kill(oldPID, syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL broker pid %d: %v", oldPID, err)
	}
	state := filepath.Dir(filepath.Dir(pidfile))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "../../scripts/brokers", "up", f.brokers)
	cmd.Env = append(os.Environ(), "OMNIBUS_BROKERS_DIR="+state)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("restart the broker: %v\n%s", err, out)
	}
	return oldPID, readPID()
}

func TestBrokerSIGKILLAndRestartDuringPublishAndConsumeDeliversEveryConfirmedMessage(t *testing.T) {
	eachFlavor(t, testBrokerRestart)
}

func testBrokerRestart(t *testing.T, f flavor) {
	f.pidfile(t)
	c := open(t, f, "groups=restart&publish_timeout=3m&reconnect_max=1s")
	topic := newTopic(t)
	s := mustSubscribe(t, c, topic, pubsub.Group("restart"))

	var mu sync.Mutex
	confirmed := map[string]bool{}
	received := map[string]int{}
	var failed []error
	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			batch := make([]*pubsub.Message, 10)
			for j := range batch {
				batch[j] = &pubsub.Message{ID: fmt.Sprintf("r-%d-%d", i, j), Key: fmt.Sprintf("k%d", j%4), Payload: []byte("x")}
			}
			err := c.Publish(context.Background(), topic, batch...)
			mu.Lock()
			if err == nil {
				for _, m := range batch {
					confirmed[m.ID] = true
				}
			} else {
				failed = append(failed, err)
			}
			mu.Unlock()
		}
	}()
	recvCtx, cancelRecv := context.WithCancel(context.Background())
	defer cancelRecv()
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for {
			d, err := s.Receive(recvCtx)
			if err != nil {
				return
			}
			_ = d.Ack() // an ack lost in the restart only means a redelivery
			mu.Lock()
			received[d.Message.ID]++
			mu.Unlock()
		}
	}()
	progress := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(4 * time.Minute)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond) // polling the goroutines' counts
		}
	}
	count := func(m map[string]bool) int { mu.Lock(); defer mu.Unlock(); return len(m) }
	progress("300 messages confirmed before the restart", func() bool { return count(confirmed) >= 300 })
	before := count(confirmed)
	oldPID, newPID := restartBroker(t, f)
	if oldPID == newPID {
		t.Fatalf("broker pid %d unchanged after the restart", oldPID)
	}
	progress("300 more messages confirmed after the restart", func() bool { return count(confirmed) >= before+300 })
	close(stop)
	<-pubDone
	progress("every confirmed message received", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for id := range confirmed {
			if received[id] == 0 {
				return false
			}
		}
		return true
	})
	cancelRecv()
	<-recvDone
	mu.Lock()
	defer mu.Unlock()
	dups := 0
	for _, n := range received {
		dups += n - 1
	}
	t.Logf("broker pid %d SIGKILLed, restarted as %d; %d messages confirmed, all received (%d redelivered twice or more); %d publish calls failed: %v",
		oldPID, newPID, len(confirmed), dups, len(failed), failed[:min(3, len(failed))])
}
