package main

import (
	"testing"

	"github.com/omnibusmq/omnibus/integration"
)

// testBroker is one broker of the test harness, by the URL a user would
// give the CLI.
type testBroker struct {
	name string
	url  func(t *testing.T) string
}

// everyBroker is the embedded broker (as memURL) and every broker the
// harness starts.
func everyBroker(memURL string) []testBroker {
	return []testBroker{
		{"mem", func(*testing.T) string { return memURL }},
		{"kafka", func(t *testing.T) string { return "kafka://" + integration.Kafka(t) + "?auto_create=true" }},
		{"rabbitmq", func(t *testing.T) string { return integration.AMQP(t) }},
		{"postgres", func(t *testing.T) string { return integration.Postgres(t) }},
		{"nsq", func(t *testing.T) string { return integration.NSQ(t) }},
		{"activemq", func(t *testing.T) string { return integration.ActiveMQ(t) }},
		{"activemq-classic", func(t *testing.T) string { return integration.ActiveMQClassic(t) }},
	}
}
