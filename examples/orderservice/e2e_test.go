package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
)

var e2eSeq atomic.Int64

// TestOrderServiceEndToEnd runs the same service on every broker; only the
// broker URL (OMNIBUS_URL in production) differs between the subtests.
func TestOrderServiceEndToEnd(t *testing.T) {
	brokers := []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"mem", func(t *testing.T) string { return fmt.Sprintf("mem://e2e-%d", e2eSeq.Add(1)) }},
		{"kafka", func(t *testing.T) string {
			return "kafka://" + integration.Kafka(t) + "?auto_create=true&partitions=4"
		}},
		{"rabbitmq", func(t *testing.T) string { return integration.AMQP(t) }},
		{"postgres", func(t *testing.T) string { return integration.Postgres(t) }},
		{"nsq", func(t *testing.T) string { return integration.NSQ(t) }},
		{"activemq", func(t *testing.T) string { return integration.ActiveMQ(t) }},
		{"activemq-classic", func(t *testing.T) string { return integration.ActiveMQClassic(t) }},
	}
	for _, b := range brokers {
		t.Run(b.name, func(t *testing.T) {
			url := b.url(t)
			if v := os.Getenv("OMNIBUS_URL"); v != "" && b.name != "mem" {
				t.Logf("OMNIBUS_URL is set but each subtest picks its own broker")
			}
			runEndToEnd(t, url)
		})
	}
}

func runEndToEnd(t *testing.T, brokerURL string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// Topics of their own: every run starts from a fresh broker state (no
	// queue, group or message of an earlier run), as on a fresh broker.
	run := e2eSeq.Add(1)
	prefix := fmt.Sprintf("e2e%d.%d.", time.Now().UnixNano(), run)
	svc, err := New(ctx, Config{BrokerURL: brokerURL, DB: "sqlite:" + filepath.Join(t.TempDir(), "orders.db"), Logger: log, TopicPrefix: prefix})
	if err != nil {
		t.Fatalf("start service on %s: %v", pubsub.Redact(brokerURL), err)
	}
	defer svc.Close()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- svc.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("service run: %v", err)
		}
	}()
	select {
	case <-svc.Running():
	case err := <-done:
		t.Fatalf("service stopped: %v", err)
	case <-ctx.Done():
		t.Fatal("service did not start")
	}
	c := svc.Client()

	api := httptest.NewServer(svc.HTTP())
	defer api.Close()
	post := func(customer string, cents int64) (orderID, msgID string) {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"customer": customer, "amount_cents": cents})
		resp, err := http.Post(api.URL+"/orders", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			b, _ := io.ReadAll(resp.Body)
			t.Fatalf("POST /orders: %d %s", resp.StatusCode, b)
		}
		var out map[string]string
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return out["order_id"], out["message_id"]
	}

	flaky := "flaky"
	svc.FailFirstChargeFor(flaky)
	valid := map[string]bool{}
	invalid := map[string]bool{}
	var dupOrder, dupMsg, dupCustomer string
	for i := 0; i < 40; i++ {
		customer := fmt.Sprintf("c%d", i%8)
		if i%10 == 3 {
			customer = flaky
		}
		cents := int64(100 + i)
		if i%13 == 5 {
			cents = -int64(i) // cannot be charged: poisoned
		}
		id, msgID := post(customer, cents)
		if cents > 0 {
			valid[id] = true
			if dupOrder == "" {
				dupOrder, dupMsg, dupCustomer = id, msgID, customer
			}
		} else {
			invalid[id] = true
		}
	}
	// The broker delivers one event twice (same ID): it must be charged once.
	dupBody, _ := json.Marshal(OrderCreated{OrderID: dupOrder, Customer: dupCustomer, AmountCents: 100})
	if err := c.Publish(ctx, svc.Topic(TopicOrderCreated), &pubsub.Message{ID: dupMsg, Key: dupCustomer, Payload: dupBody}); err != nil {
		t.Fatal(err)
	}
	// A last order for the same customer: with per-key order it is handled
	// after the duplicate, so once it is paid the duplicate was handled too.
	last, _ := post(dupCustomer, 999)
	valid[last] = true

	// Only now read what the service published, with the groups a
	// downstream service and the DLQ tools use: the service itself made
	// sure they exist, so nothing published before this point is lost.
	paid, err := c.Subscribe(ctx, svc.Topic(TopicPaid), pubsub.Group(GroupShipping), pubsub.FromOldest())
	if err != nil {
		t.Fatal(err)
	}
	defer paid.Close()
	poison, err := c.Subscribe(ctx, svc.Topic(TopicPoison), pubsub.Group(middleware.PoisonReaderGroup), pubsub.FromOldest())
	if err != nil {
		t.Fatal(err)
	}
	defer poison.Close()

	seenPaid := map[string]int{}
	for len(seenPaid) < len(valid) {
		d, err := paid.Receive(ctx)
		if err != nil {
			t.Fatalf("waiting for payments (%d of %d): %v", len(seenPaid), len(valid), err)
		}
		_ = d.Ack()
		var p struct {
			OrderID string `json:"order_id"`
		}
		_ = json.Unmarshal(d.Message.Payload, &p)
		if valid[p.OrderID] {
			seenPaid[p.OrderID]++
		}
	}
	seenPoison := map[string]bool{}
	for len(seenPoison) < len(invalid) {
		d, err := poison.Receive(ctx)
		if err != nil {
			t.Fatalf("waiting for poisoned orders (%d of %d): %v", len(seenPoison), len(invalid), err)
		}
		_ = d.Ack()
		var o OrderCreated
		_ = json.Unmarshal(d.Message.Payload, &o)
		if !invalid[o.OrderID] {
			continue
		}
		seenPoison[o.OrderID] = true
		md := d.Message.Metadata
		if md[middleware.MetaPoisonReason] != middleware.ReasonPermanent || md[middleware.MetaPoisonOriginalTopic] != svc.Topic(TopicOrderCreated) ||
			md[middleware.MetaPoisonHandler] != "billing" || md[middleware.MetaPoisonError] == "" {
			t.Errorf("poisoned order %s has fault record %v", o.OrderID, md)
		}
	}
	charges, err := svc.Charges(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for id := range valid {
		if charges[id] != 1 {
			t.Errorf("order %s charged %d times, want exactly once", id, charges[id])
		}
	}
	for id := range invalid {
		if charges[id] != 0 {
			t.Errorf("invalid order %s charged %d times, want never", id, charges[id])
		}
	}
	t.Logf("%s: %d orders charged once each (one flaky customer retried, one duplicate skipped), %d poisoned with their reason",
		pubsub.Redact(brokerURL), len(valid), len(invalid))
}
