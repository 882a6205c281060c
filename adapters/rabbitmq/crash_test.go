package rabbitmq_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestMain(m *testing.M) {
	pubsubtest.CrashMain()
	os.Exit(m.Run())
}

// Consumers SIGKILLed mid-stream and restarted in the same group lose
// nothing; with partitions (single-active-consumer queues per key range)
// first effects keep per-key order, alone and with two competing consumers.
func TestCrashKit(t *testing.T) {
	cases := []struct {
		name      string
		params    string
		consumers int
	}{
		{"one-consumer", "groups=crash", 1},
		{"partitions/two-competing-consumers", "groups=crash&partitions=4", 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			u := integration.AMQP(t)
			sep := "?"
			if len(u) > 0 && containsQuery(u) {
				sep = "&"
			}
			pubsubtest.RunCrash(t, pubsubtest.CrashOptions{
				URL:       u + sep + tc.params,
				Topic:     fmt.Sprintf("crash-%d", time.Now().UnixNano()),
				Consumers: tc.consumers,
			})
		})
	}
}

func containsQuery(u string) bool {
	for i := 0; i < len(u); i++ {
		if u[i] == '?' {
			return true
		}
	}
	return false
}
