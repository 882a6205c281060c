package activemq

import (
	"testing"

	"github.com/omnibusmq/omnibus/pubsub/driver"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestActiveMQNameRulesAreCheckedBeforeTheBroker(t *testing.T) {
	pubsubtest.CheckNames(t, driver.Capabilities{Broker: "activemq", GroupNames: groupNames}, []pubsubtest.NameCase{
		{Topic: "orders created / é", OK: true},
		{Group: "billing team", OK: true},
		{Group: "a:b"},
		{Group: "::"},
	})
}

func TestActiveMQClassicNameRulesAreCheckedBeforeTheBroker(t *testing.T) {
	pubsubtest.CheckNames(t, driver.Capabilities{Broker: "activemq", TopicNames: classicTopicNames, GroupNames: classicGroupNames}, []pubsubtest.NameCase{
		{Topic: "orders.created", OK: true},
		{Group: "billing-v2", OK: true},
		{Topic: "orders.*"},
		{Topic: "a>b"},
		{Topic: "a,b"},
		{Topic: "a b"},
		{Group: "billing.v2"},
		{Group: "a:b"},
		{Group: "a\tb"},
	})
}

func TestOpenRefusesAnotherAdaptersScheme(t *testing.T) {
	pubsubtest.CheckOpenRefusesScheme(t, Open, "mem://orders", "mem")
}
