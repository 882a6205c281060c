// Package pubsubtest is the conformance suite every omnibus adapter passes.
//
// An adapter's test calls Run with a Harness that opens clients on a real
// broker:
//
//	func TestConformance(t *testing.T) {
//		pubsubtest.Run(t, pubsubtest.Harness{
//			Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
//				return pubsub.Open(ctx, "mem://conformance")
//			},
//		})
//	}
//
// The suite is capability-aware: cases that need a capability the client's
// Capabilities does not claim are skipped with the reason; every claimed
// capability is proven.
package pubsubtest

import (
	"context"
	"fmt"
	"regexp"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
)

// Harness connects the suite to one broker.
type Harness struct {
	// Open returns a new client on the broker under test. A test may open
	// several; they must reach the same broker. The suite closes them.
	Open func(ctx context.Context, t *testing.T) (*pubsub.Client, error)
	// NewTopic returns a topic name unique to this test, creating it on the
	// broker if the adapter needs that. Nil means a unique name is made up.
	NewTopic func(ctx context.Context, t *testing.T, base string) string
	// SubscribeOptions are added to every Subscribe the suite makes (for
	// example pubsub.FromOldest() on a log-based broker).
	SubscribeOptions []pubsub.SubscribeOption
	// Wait bounds how long the suite waits for an expected message before
	// it fails. Default 30s.
	Wait time.Duration
}

var topicSeq atomic.Int64

var unsafeChars = regexp.MustCompile(`[^a-zA-Z0-9._-]+`)

func (h Harness) topic(ctx context.Context, t *testing.T) string {
	base := unsafeChars.ReplaceAllString(t.Name(), "_")
	if len(base) > 80 {
		base = base[len(base)-80:]
	}
	base = fmt.Sprintf("omnibus-%s-%d-%d", base, time.Now().UnixNano()%1e9, topicSeq.Add(1))
	if h.NewTopic != nil {
		return h.NewTopic(ctx, t, base)
	}
	return base
}

func (h Harness) wait() time.Duration {
	if h.Wait > 0 {
		return h.Wait
	}
	return 30 * time.Second
}

func (h Harness) client(ctx context.Context, t *testing.T) *pubsub.Client {
	t.Helper()
	c, err := h.Open(ctx, t)
	if err != nil {
		t.Fatalf("open client: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close client: %v", err)
		}
	})
	return c
}

func (h Harness) subscribe(ctx context.Context, t *testing.T, c *pubsub.Client, topic string, opts ...pubsub.SubscribeOption) *pubsub.Subscription {
	t.Helper()
	all := append(append([]pubsub.SubscribeOption(nil), h.SubscribeOptions...), opts...)
	s, err := c.Subscribe(ctx, topic, all...)
	if err != nil {
		t.Fatalf("subscribe to %q: %v", topic, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// receive returns the next delivery or fails the test after the harness's wait.
func (h Harness) receive(t *testing.T, s *pubsub.Subscription) *pubsub.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), h.wait())
	defer cancel()
	d, err := s.Receive(ctx)
	if err != nil {
		t.Fatalf("receive from %q: %v", s.Topic(), err)
	}
	return d
}

func ack(t *testing.T, d *pubsub.Delivery) {
	t.Helper()
	if err := d.Ack(); err != nil {
		t.Fatalf("ack %s: %v", d.Message.ID, err)
	}
}

func publish(ctx context.Context, t *testing.T, c *pubsub.Client, topic string, msgs ...*pubsub.Message) {
	t.Helper()
	if err := c.Publish(ctx, topic, msgs...); err != nil {
		t.Fatalf("publish to %q: %v", topic, err)
	}
}

func groupName(t *testing.T, suffix string) string {
	return fmt.Sprintf("g-%d-%s", topicSeq.Add(1), suffix)
}

func needGroups(t *testing.T, c *pubsub.Client) {
	t.Helper()
	if !c.Capabilities().Groups {
		t.Skip("adapter does not claim Capabilities.Groups")
	}
}
