package kafka

import (
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub/driver"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestKafkaNameRulesAreCheckedBeforeTheBroker(t *testing.T) {
	pubsubtest.CheckNames(t, driver.Capabilities{Broker: "kafka", TopicNames: topicNames}, []pubsubtest.NameCase{
		{Topic: "orders.created_v2-x", OK: true},
		{Topic: strings.Repeat("t", 249), OK: true},
		{Topic: strings.Repeat("t", 250)},
		{Topic: "has space"},
		{Topic: "slash/topic"},
		{Topic: "café"},
		{Topic: "."},
		{Topic: ".."},
		{Topic: "...", OK: true},
		{Group: "any group: spaces, / and é", OK: true},
		{Group: strings.Repeat("g", 1000), OK: true},
	})
}

func TestOpenRefusesAnotherAdaptersScheme(t *testing.T) {
	pubsubtest.CheckOpenRefusesScheme(t, Open, "mem://orders", "mem")
}
