package pubsubtest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
)

// InspectOptions configure RunInspect.
type InspectOptions struct {
	// Open returns a new client on the broker under test.
	Open func(ctx context.Context, t *testing.T) (*pubsub.Client, error)
	// TopicsUnsupported says that the adapter's Topics returns an error
	// wrapping ErrUnsupported (the broker cannot list topics); RunInspect
	// then checks that it does.
	TopicsUnsupported bool
	// TopicMessages, when set, is the Messages that Topics must report for
	// a topic with n messages published and m of them acked by its one
	// group (what the broker counts differs: retained records, waiting
	// messages). Nil: Messages is not checked.
	TopicMessages func(n, m int) int64
	// SubscribeOptions are added to every Subscribe.
	SubscribeOptions []pubsub.SubscribeOption
	// Settle, when set, is how long the broker may take to count again the
	// deliveries a closed member gave back (RabbitMQ quorum queues return
	// them asynchronously): Groups is asked again, every 50ms, until it
	// reports the expected lag or Settle has passed, and the last answer is
	// checked. Zero: the first answer must be right.
	Settle time.Duration
}

// groupsSettled asks Groups until group g of topic reports lag want, or
// o.Settle has passed; it returns the last answer.
func (o InspectOptions) groupsSettled(ctx context.Context, c *pubsub.Client, topic string, want int64) ([]pubsub.GroupInfo, error) {
	deadline := time.Now().Add(o.Settle)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		gs, err := c.Groups(ctx, topic, "g")
		if err != nil || time.Now().After(deadline) {
			return gs, err
		}
		for _, g := range gs {
			if g.Group == "g" && g.Lag == want {
				return gs, nil
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return gs, nil
		}
	}
}

// RunInspect checks an adapter's driver.Inspector against a real broker:
// for each case it publishes n messages to a fresh topic whose group "g"
// exists, receives and acks m of them in that group, and checks that
// Groups reports a lag of n−m for the group (and 0 in flight where the
// adapter knows) and that Topics lists the topic.
func RunInspect(t *testing.T, o InspectOptions) {
	cases := []struct {
		name string
		n, m int
	}{
		{"nothing consumed: lag is everything published", 5, 0},
		{"part consumed: lag is what is left", 10, 4},
		{"all consumed: no lag", 3, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			c, err := o.Open(ctx, t)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			topic := fmt.Sprintf("inspect-%s-%d%d", strings.ReplaceAll(pubsub.NewID(), "-", "")[20:], tc.n, tc.m)
			t.Cleanup(func() {
				// Throwaway topics do not pile up on a shared broker.
				dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				if c, err := o.Open(dctx, t); err == nil {
					_ = c.DeleteTopic(dctx, topic, "g")
					_ = c.Close()
				}
			})
			opts := append([]pubsub.SubscribeOption{pubsub.Group("g")}, o.SubscribeOptions...)
			sub, err := c.Subscribe(ctx, topic, opts...)
			if err != nil {
				t.Fatal(err)
			}
			if err := sub.Close(); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < tc.n; i++ {
				if err := c.Publish(ctx, topic, &pubsub.Message{Payload: []byte(fmt.Sprint(i))}); err != nil {
					t.Fatal(err)
				}
			}
			if tc.m > 0 {
				sub, err := c.Subscribe(ctx, topic, append(opts, pubsub.Prefetch(tc.m))...)
				if err != nil {
					t.Fatal(err)
				}
				for i := 0; i < tc.m; i++ {
					d, err := sub.Receive(ctx)
					if err != nil {
						t.Fatalf("receive %d of %d: %v", i+1, tc.m, err)
					}
					if err := d.Ack(); err != nil {
						t.Fatal(err)
					}
				}
				if err := sub.Close(); err != nil {
					t.Fatal(err)
				}
			}
			gs, err := o.groupsSettled(ctx, c, topic, int64(tc.n-tc.m))
			if err != nil {
				t.Fatalf("Groups: %v", err)
			}
			var found bool
			for _, g := range gs {
				if g.Topic != topic {
					t.Errorf("Groups(%q) reported a group of topic %q", topic, g.Topic)
				}
				if g.Group != "g" {
					continue
				}
				found = true
				if want := int64(tc.n - tc.m); g.Lag != want {
					t.Errorf("group g: lag %d, want %d (%d published, %d acked)", g.Lag, want, tc.n, tc.m)
				}
				if g.InFlight != -1 && g.InFlight != 0 {
					t.Errorf("group g: %d in flight with no member, want 0 (or -1: unknown)", g.InFlight)
				}
			}
			if !found {
				t.Fatalf("Groups(%q) = %+v: no group g", topic, gs)
			}
			ts, err := c.Topics(ctx)
			if o.TopicsUnsupported {
				if !errors.Is(err, pubsub.ErrUnsupported) {
					t.Errorf("Topics: %v, want an error wrapping ErrUnsupported", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Topics: %v", err)
			}
			for _, ti := range ts {
				if ti.Name != topic {
					continue
				}
				if o.TopicMessages != nil {
					if want := o.TopicMessages(tc.n, tc.m); ti.Messages != want {
						t.Errorf("topic %s: %d messages, want %d", topic, ti.Messages, want)
					}
				}
				if ti.Groups != -1 && ti.Groups != 1 {
					t.Errorf("topic %s: %d groups, want 1 (or -1: unknown)", topic, ti.Groups)
				}
				return
			}
			t.Errorf("Topics does not list %s", topic)
		})
	}
}
