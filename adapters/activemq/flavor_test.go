package activemq_test

import (
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/adapters/activemq"
	"github.com/omnibusmq/omnibus/integration"
)

// flavor is one broker the integration tests run against: ActiveMQ Artemis
// (scripts/brokers up activemq) or ActiveMQ Classic (up activemq-classic).
type flavor struct {
	name    string
	brokers string // the scripts/brokers name
	url     func(testing.TB) string
	pidfile func(testing.TB) string
	tls     func(testing.TB) (url, caFile string)
	// groupQueue is the raw AMQP address of (topic, group)'s queue and the
	// capabilities to attach it with.
	groupQueue func(topic, group string) (string, []string)
	// publishTarget is the raw AMQP address a topic is published to.
	publishTarget func(topic string) (string, []string)
	// dlq is the raw AMQP address of the dead-letter queue that holds
	// (topic, group)'s poison messages; delayed: the message was nacked
	// with a delay before (Artemis files delayed copies elsewhere).
	dlq func(topic, group string, delayed bool) string
}

var topicCapability = []string{"topic"}

var flavors = []flavor{
	{
		name:    "artemis",
		brokers: "activemq",
		url:     integration.ActiveMQ,
		tls:     integration.ActiveMQS,
		pidfile: func(t testing.TB) string { _, p := integration.ActiveMQControl(t); return p },
		groupQueue: func(topic, group string) (string, []string) {
			return topic + "::" + activemq.QueueName(topic, group), topicCapability
		},
		publishTarget: func(topic string) (string, []string) { return topic, topicCapability },
		dlq: func(topic, group string, delayed bool) string {
			// The delayed copy's address is the group queue's fully
			// qualified name, which the per-topic dead-letter queue's
			// filter does not match: it lands in the dead-letter address's
			// catch-all queue.
			if delayed {
				return "DLQ::DLQ"
			}
			return "DLQ::DLQ." + topic
		},
	},
	{
		name:    "classic",
		brokers: "activemq-classic",
		url:     integration.ActiveMQClassic,
		tls:     integration.ActiveMQClassicTLS,
		pidfile: integration.ActiveMQClassicPidfile,
		groupQueue: func(topic, group string) (string, []string) {
			return "queue://" + activemq.ClassicQueueName(topic, group), nil
		},
		publishTarget: func(topic string) (string, []string) { return "topic://VirtualTopic." + topic, nil },
		dlq: func(topic, group string, _ bool) string {
			return "queue://DLQ." + activemq.ClassicQueueName(topic, group)
		},
	},
}

// eachFlavor runs fn as a subtest per broker flavor; a flavor whose broker
// is not up skips (fails under CI=true) inside its subtest.
func eachFlavor(t *testing.T, fn func(t *testing.T, f flavor)) {
	for _, f := range flavors {
		t.Run(f.name, func(t *testing.T) { fn(t, f) })
	}
}

// withParams adds URL query parameters to u.
func withParams(u, params string) string {
	switch {
	case params == "":
		return u
	case strings.Contains(u, "?"):
		return u + "&" + params
	}
	return u + "?" + params
}
