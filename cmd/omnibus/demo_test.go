package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
)

// The demo runs on every broker by URL alone, and its numbers add up also
// where consumers see the last messages before the publisher's last
// confirmation arrives (ActiveMQ Classic syncs its journal before it
// confirms).
func TestDemoRunsOnEveryBrokerByURL(t *testing.T) {
	brokers := []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"mem", func(*testing.T) string { return "mem://demo-test" }},
		{"kafka", func(t *testing.T) string { return "kafka://" + integration.Kafka(t) + "?auto_create=true" }},
		{"rabbitmq", func(t *testing.T) string { return integration.AMQP(t) }},
		{"postgres", func(t *testing.T) string { return integration.Postgres(t) }},
		{"nsq", func(t *testing.T) string { return integration.NSQ(t) }},
		{"activemq", func(t *testing.T) string { return integration.ActiveMQ(t) }},
		{"activemq-classic", func(t *testing.T) string { return integration.ActiveMQClassic(t) }},
	}
	for _, b := range brokers {
		t.Run(b.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			d := &DemoCmd{URL: b.url(t), Orders: 1000, Topic: fmt.Sprintf("demo-test-%d", time.Now().UnixNano()), Nack: 50}
			var err error
			out := captureStdout(t, func() { err = runBasicDemo(ctx, stdout, d) })
			if err != nil {
				t.Fatalf("demo on %s: %v\n%s", b.name, err, out)
			}
			if want := "published 1000; delivered 2000 = published × 2 groups"; !strings.Contains(out, want) {
				t.Errorf("demo output lacks %q:\n%s", want, out)
			}
		})
	}
}
