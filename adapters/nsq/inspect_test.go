package nsq_test

import (
	"context"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestInspectorReportsLagPerGroup(t *testing.T) {
	for _, tc := range []struct {
		name    string
		lookupd bool
	}{
		{"nsqd's HTTP port next to its TCP port", false},
		{"nsqds found through lookupd", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := integration.NSQ(t)
			if !tc.lookupd {
				url = withoutLookupd(t, url)
			}
			pubsubtest.RunInspect(t, pubsubtest.InspectOptions{
				Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
					return pubsub.Open(ctx, url)
				},
				// nsqd counts a message it is copying from the topic to
				// its channels in neither, and a FIN (which has no
				// answer) a moment after it arrives.
				Settle:        10 * time.Second,
				TopicMessages: func(n, m int) int64 { return int64(n - m) },
			})
		})
	}
}
