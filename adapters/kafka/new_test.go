package kafka_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/omnibusmq/omnibus/adapters/kafka"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// New refuses, before any network, options that the brought client
// already decides and a client that consumes.
func TestNewRejectsConflictingOptionsAndConsumingClients(t *testing.T) {
	plain, err := kgo.NewClient(kgo.SeedBrokers("127.0.0.1:1"))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	consumer, err := kgo.NewClient(kgo.SeedBrokers("127.0.0.1:1"), kgo.ConsumerGroup("billing"), kgo.ConsumeTopics("orders"))
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	for _, tc := range []struct {
		name string
		cl   *kgo.Client
		o    kafka.Options
		want string
	}{
		{"nil client", nil, kafka.Options{}, "client is nil"},
		{"brokers in options", plain, kafka.Options{Brokers: []string{"k:9092"}}, "Options.Brokers"},
		{"dialer in options", plain, kafka.Options{Dialer: func(ctx context.Context, network, host string) (net.Conn, error) { return nil, nil }}, "Options.Dialer"},
		{"consuming client", consumer, kafka.Options{}, `group "billing"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := kafka.New(context.Background(), tc.cl, tc.o)
			if !errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want ErrInvalid naming %q", err, tc.want)
			}
		})
	}
}

// A Broker made by New on the caller's client round-trips a message, and
// closing it leaves the caller's client working.
func TestNewRunsOnTheBroughtClientsSettingsAndLeavesItOpen(t *testing.T) {
	brokers := integration.Kafka(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	b, err := kafka.New(ctx, cl, kafka.Options{AutoCreate: true, StartFromOldest: true})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	c := pubsub.NewClient(b)
	topic := "new-brought-" + pubsub.NewID()
	if err := c.Publish(ctx, topic, &pubsub.Message{ID: "m1", Payload: []byte("x")}); err != nil {
		t.Fatalf("publish: %v", err)
	}
	s, err := c.Subscribe(ctx, topic, pubsub.Group("g"), pubsub.FromOldest())
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	d, err := s.Receive(ctx)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	if d.Message.ID != "m1" {
		t.Fatalf("received %q, want m1", d.Message.ID)
	}
	_ = d.Ack()
	_ = s.Close()
	if err := c.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := cl.Ping(ctx); err != nil {
		t.Fatalf("the caller's client no longer works after Close: %v", err)
	}
}
