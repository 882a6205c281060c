package rabbitmq

import (
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub/driver"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestRabbitMQNameRulesAreCheckedBeforeTheBroker(t *testing.T) {
	pubsubtest.CheckNames(t, driver.Capabilities{Broker: "rabbitmq", TopicNames: topicNames}, []pubsubtest.NameCase{
		{Topic: "orders created / é", OK: true},
		{Topic: strings.Repeat("t", 255), OK: true},
		{Topic: strings.Repeat("t", 256)},
		{Topic: "amq.topic"},
		{Topic: "amq."},
		{Topic: "amq", OK: true},
		{Topic: "amqp.orders", OK: true},
		{Topic: "a", OK: true},
		{Topic: "am", OK: true},
		{Topic: "orders\namq.x", OK: true},
		{Group: strings.Repeat("g", 1000), OK: true},
		{Group: "amq.group", OK: true},
	})
}

func TestOpenRefusesAnotherAdaptersScheme(t *testing.T) {
	pubsubtest.CheckOpenRefusesScheme(t, Open, "mem://orders", "mem")
}
