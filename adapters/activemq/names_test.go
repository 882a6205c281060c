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

func TestOpenRefusesAnotherAdaptersScheme(t *testing.T) {
	pubsubtest.CheckOpenRefusesScheme(t, Open, "mem://orders", "mem")
}
