package rocketmq_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/omnibusmq/omnibus/adapters/rocketmq"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestMain(m *testing.M) {
	pubsubtest.CrashMain()
	os.Exit(m.Run())
}

var seq atomic.Int64

var unsafe = regexp.MustCompile(`[^a-zA-Z0-9_-]+`)

// topicName returns a fresh RocketMQ topic name (at most 127 characters)
// ending with the last characters of base.
func topicName(base string) string {
	base = unsafe.ReplaceAllString(base, "_")
	if len(base) > 80 {
		base = base[len(base)-80:]
	}
	return fmt.Sprintf("t%d-%d-%s", time.Now().UnixNano()%1e9, seq.Add(1), base)
}

func TestConformance(t *testing.T) {
	url := integration.RocketMQ(t)
	pubsubtest.Run(t, pubsubtest.Harness{
		Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
			return pubsub.Open(ctx, url)
		},
		NewTopic: func(_ context.Context, _ *testing.T, base string) string { return topicName(base) },
		Wait:     60 * time.Second,
	})
}

// Consumers SIGKILLed mid-stream and restarted in the same group lose
// nothing, alone and with two competing consumers.
func TestCrashKit(t *testing.T) {
	url := integration.RocketMQ(t)
	cases := []struct {
		name      string
		consumers int
	}{
		{"one-consumer", 1},
		{"two-competing-consumers", 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pubsubtest.RunCrash(t, pubsubtest.CrashOptions{
				URL:        url,
				Topic:      topicName("crash-" + tc.name),
				FromOldest: true,
				Consumers:  tc.consumers,
			})
		})
	}
}
