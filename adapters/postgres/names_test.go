package postgres

import (
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub/driver"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestPostgresNameRulesAreCheckedBeforeTheBroker(t *testing.T) {
	pubsubtest.CheckNames(t, driver.Capabilities{Broker: "postgres", TopicNames: nameRule, GroupNames: nameRule}, []pubsubtest.NameCase{
		{Topic: "orders created / é", OK: true},
		{Topic: strings.Repeat("é", 512), OK: true},
		{Topic: strings.Repeat("t", 1025)},
		{Group: strings.Repeat("g", 1024), OK: true},
		{Group: strings.Repeat("g", 1025)},
	})
}

func TestOpenRefusesAnotherAdaptersScheme(t *testing.T) {
	pubsubtest.CheckOpenRefusesScheme(t, Open, "mem://orders", "mem")
}
