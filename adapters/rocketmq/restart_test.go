package rocketmq_test

import (
	"context"
	"fmt"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// The broker SIGKILLed and restarted on its store while a publisher and a
// consumer run: every message whose Publish returned nil is delivered.
func TestBrokerRestartLosesNoConfirmedPublish(t *testing.T) {
	url := integration.RocketMQ(t)
	ctl := integration.RocketMQControl(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	c, err := pubsub.Open(ctx, url)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer c.Close()
	topic := topicName("restart")
	sub, err := c.Subscribe(ctx, topic, pubsub.Group("restart"), pubsub.FromOldest())
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	defer sub.Close()

	var mu sync.Mutex
	confirmed := map[string]bool{}
	received := map[string]bool{}
	allIn := make(chan struct{})
	var publisherDone bool
	check := func() {
		if !publisherDone {
			return
		}
		for id := range confirmed {
			if !received[id] {
				return
			}
		}
		select {
		case <-allIn:
		default:
			close(allIn)
		}
	}
	go func() {
		for {
			d, err := sub.Receive(ctx)
			if err != nil {
				return
			}
			mu.Lock()
			received[d.Message.ID] = true
			check()
			mu.Unlock()
			_ = d.Ack()
		}
	}()

	restarted := make(chan error, 1)
	publish := func(i int) {
		pctx, pcancel := context.WithTimeout(ctx, 15*time.Second)
		defer pcancel()
		id := fmt.Sprintf("restart-%d", i)
		if err := c.Publish(pctx, topic, &pubsub.Message{ID: id, Payload: []byte(id)}); err == nil {
			mu.Lock()
			confirmed[id] = true
			mu.Unlock()
		}
	}
	pace := time.NewTicker(20 * time.Millisecond)
	defer pace.Stop()
	i := 0
	for ; i < 100; i++ {
		<-pace.C
		publish(i)
	}
	go func() {
		if out, err := exec.CommandContext(ctx, ctl, "kill").CombinedOutput(); err != nil {
			restarted <- fmt.Errorf("ctl kill: %v: %s", err, out)
			return
		}
		out, err := exec.CommandContext(ctx, ctl, "start").CombinedOutput()
		if err != nil {
			err = fmt.Errorf("ctl start: %v: %s", err, out)
		}
		restarted <- err
	}()
	// Keep publishing while the broker is down and until 100 more
	// messages were confirmed after its restart.
	var restartErr error
	up := false
	after := 0
	for after < 100 {
		select {
		case restartErr = <-restarted:
			if restartErr != nil {
				t.Fatal(restartErr)
			}
			up = true
		case <-pace.C:
		}
		publish(i)
		i++
		if up {
			after++
		}
	}
	mu.Lock()
	publisherDone = true
	n := len(confirmed)
	check()
	mu.Unlock()
	t.Logf("published %d, %d confirmed", i, n)
	select {
	case <-allIn:
	case <-time.After(3 * time.Minute):
		mu.Lock()
		defer mu.Unlock()
		missing := 0
		for id := range confirmed {
			if !received[id] {
				missing++
			}
		}
		t.Fatalf("%d of %d confirmed messages not delivered within 3m after the restart", missing, n)
	}
}
