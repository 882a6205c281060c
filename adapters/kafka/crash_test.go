package kafka_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestMain(m *testing.M) {
	pubsubtest.CrashMain()
	os.Exit(m.Run())
}

// Consumers SIGKILLed mid-stream and restarted in the same group lose
// nothing, and first effects keep per-key order, alone and with two
// competing consumers (a rebalance at every kill and restart).
func TestCrashKit(t *testing.T) {
	cases := []struct {
		name      string
		consumers int
	}{
		{"one-consumer", 1},
		{"two-competing-consumers", 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			topic := fmt.Sprintf("crash-%s-%d", tc.name, time.Now().UnixNano())
			pubsubtest.RunCrash(t, pubsubtest.CrashOptions{
				URL:        brokerURL(t, "auto_create=true&partitions=4"),
				Topic:      topic,
				FromOldest: true,
				Consumers:  tc.consumers,
			})
		})
	}
}
