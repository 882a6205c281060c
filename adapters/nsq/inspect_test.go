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

// A lookupd (or nsqd HTTP listener) that accepts and never answers fails
// Groups and Topics after connect_timeout instead of hanging.
func TestInspectorGivesUpOnASilentStatsListener(t *testing.T) {
	url := withoutLookupd(t, integration.NSQ(t))
	url += "&lookupd=" + integration.SilentListener(t) + "&connect_timeout=500ms"
	c := open(t, url)
	calls := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"Groups", func(ctx context.Context) error { _, err := c.Groups(ctx, "t"); return err }},
		{"Topics", func(ctx context.Context) error { _, err := c.Topics(ctx); return err }},
	}
	for _, tc := range calls {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			start := time.Now()
			err := tc.call(ctx)
			if took := time.Since(start); err == nil || took > 5*time.Second || ctx.Err() != nil {
				t.Errorf("%s against a silent lookupd: %v after %v; want an error after about connect_timeout (500ms)", tc.name, err, took)
			}
		})
	}
}
