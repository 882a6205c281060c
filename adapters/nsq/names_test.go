package nsq

import (
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub/driver"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestNSQNameRulesAreCheckedBeforeTheBroker(t *testing.T) {
	pubsubtest.CheckNames(t, driver.Capabilities{Broker: "nsq", TopicNames: nameRule, GroupNames: nameRule}, []pubsubtest.NameCase{
		{Topic: "orders.created_v2-x", OK: true},
		{Topic: strings.Repeat("t", 64), OK: true},
		{Topic: strings.Repeat("t", 65)},
		{Topic: "a b"},
		{Topic: "orders#ephemeral", OK: true},
		{Topic: "#ephemeral"},
		{Topic: "orders#other"},
		{Group: "billing", OK: true},
		{Group: "billing#ephemeral", OK: true},
		{Group: strings.Repeat("g", 55) + "#ephemeral"},
		{Group: "no spaces allowed"},
	})
}

func TestOpenRefusesAnotherAdaptersScheme(t *testing.T) {
	pubsubtest.CheckOpenRefusesScheme(t, Open, "mem://orders", "mem")
}
