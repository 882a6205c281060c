package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

// TestDLQReplayMovesPoisonedBackAndEachIsProcessedOnce: orders fail while a
// dependency is down and land in the poison topic; one of them had in fact
// been processed (its poison copy is a duplicate). After the fix, `omnibus
// dlq replay` sends them back with their IDs and every order is processed
// exactly once.
func TestDLQReplayMovesPoisonedBackAndEachIsProcessedOnce(t *testing.T) {
	ctx := context.Background()
	const url = "mem://cli-dlq-test"
	client, err := pubsub.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()

	var mu sync.Mutex
	broken := true
	processed := map[string]int{}
	handled := make(chan string, 100)
	r := router.New(client, router.Options{})
	r.Use(middleware.Poison(client, "orders.poison", middleware.PoisonOptions{}),
		middleware.Retry(middleware.RetryOptions{MaxAttempts: 2, InitialInterval: time.Millisecond}),
		middleware.Dedup(middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{}), middleware.DedupOptions{}))
	r.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
		mu.Lock()
		defer mu.Unlock()
		if broken && m.ID != "already-done" {
			return errors.New("bank is down")
		}
		processed[m.ID]++
		handled <- m.ID
		return nil
	})
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()
	defer func() { stop(); <-done }()
	<-r.Running()

	// Watch the poison topic so we know when the failures landed.
	watch, err := client.Subscribe(ctx, "orders.poison", pubsub.Group("watch"))
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{"o1", "o2", "o3"}
	for _, id := range append([]string{"already-done"}, ids...) {
		if err := client.Publish(ctx, "orders", &pubsub.Message{ID: id, Key: "k", Payload: []byte(id)}); err != nil {
			t.Fatal(err)
		}
	}
	wait := func(ch <-chan string, n int, what string) {
		t.Helper()
		for i := 0; i < n; i++ {
			select {
			case <-ch:
			case <-time.After(30 * time.Second):
				t.Fatalf("timed out waiting for %s (%d of %d)", what, i, n)
			}
		}
	}
	wait(handled, 1, "already-done")
	poisoned := make(chan string, 10)
	go func() {
		for {
			d, err := watch.Receive(ctx)
			if err != nil {
				return
			}
			_ = d.Ack()
			poisoned <- d.Message.ID
		}
	}()
	wait(poisoned, len(ids), "poisoned orders")
	watch.Close()
	// A stray poison copy of an order that was processed: replay must not
	// process it twice (dedup by ID).
	if err := client.Publish(ctx, "orders.poison", &pubsub.Message{ID: "already-done", Key: "k", Payload: []byte("already-done"),
		Metadata: map[string]string{middleware.MetaPoisonOriginalTopic: "orders", middleware.MetaPoisonHandler: "billing", middleware.MetaPoisonReason: "max-attempts"}}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	broken = false
	mu.Unlock()

	dry := &DLQReplayCmd{dlqFlags: dlqFlags{Broker: Broker{URL: url}, Topic: "orders.poison", Idle: 300 * time.Millisecond}, DryRun: true}
	if err := dry.Run(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-handled:
		t.Fatalf("dry run replayed %s", id)
	default:
	}
	cmd := &DLQReplayCmd{dlqFlags: dlqFlags{Broker: Broker{URL: url}, Topic: "orders.poison", Handler: "billing", Idle: 300 * time.Millisecond}}
	if err := cmd.Run(ctx); err != nil {
		t.Fatal(err)
	}
	wait(handled, len(ids), "replayed orders")
	stop()
	<-done
	done <- nil
	mu.Lock()
	defer mu.Unlock()
	for _, id := range append([]string{"already-done"}, ids...) {
		if processed[id] != 1 {
			t.Errorf("order %s processed %d times, want exactly once", id, processed[id])
		}
	}
}

func TestPublishAndConsumeCommands(t *testing.T) {
	ctx := context.Background()
	const url = "mem://cli-pubcons"
	keep, _ := pubsub.Open(ctx, url) // keeps the named broker alive between commands
	defer keep.Close()
	sub, err := keep.Subscribe(ctx, "t", pubsub.Group("g")) // registers the group
	if err != nil {
		t.Fatal(err)
	}
	sub.Close()
	file := filepath.Join(t.TempDir(), "lines.txt")
	if err := os.WriteFile(file, []byte("one\ntwo\nthree\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pub := &PublishCmd{Broker: Broker{URL: url}, Topic: "t", Payload: "@" + file, Lines: true, Key: "k", Header: map[string]string{"h": "v"}, Count: 2}
	if err := pub.Run(ctx); err != nil {
		t.Fatal(err)
	}
	out := captureStdout(t, func() {
		cons := &ConsumeCmd{Broker: Broker{URL: url}, Topic: "t", Group: "g", Count: 6, Timeout: 10 * time.Second}
		if err := cons.Run(ctx); err != nil {
			t.Fatal(err)
		}
	})
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 6 {
		t.Fatalf("consume printed %d lines, want 6:\n%s", len(lines), out)
	}
	for i, want := range []string{"one", "two", "three", "one", "two", "three"} {
		if !strings.Contains(lines[i], `"payload":"`+want+`"`) || !strings.Contains(lines[i], `"h":"v"`) || !strings.Contains(lines[i], `"key":"k"`) {
			t.Errorf("line %d = %s, want payload %q with key and header", i, lines[i], want)
		}
	}
	if err := (&PublishCmd{Broker: Broker{URL: url}, Topic: "t", Payload: "x", ID: "same", Count: 2}).Run(ctx); err == nil {
		t.Error("publishing one --id twice with --count 2 was accepted")
	}
}

func captureStdout(t *testing.T, fn func()) string {
	t.Helper()
	var b strings.Builder
	old := stdout
	stdout = &b
	defer func() { stdout = old }()
	fn()
	return b.String()
}
