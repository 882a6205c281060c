package pubsubtest

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// NameCase is one name for CheckNames: a topic (Group "") or a group (on
// topic "t"), and whether the broker accepts it.
type NameCase struct {
	Topic, Group string
	OK           bool
}

// errReached is what the stub broker returns once a name passed the
// portable layer's checks.
var errReached = errors.New("pubsubtest: the name reached the broker")

// namesBroker reports caps and answers every call that gets past the
// portable layer with errReached.
type namesBroker struct{ caps driver.Capabilities }

func (b namesBroker) SendBatch(context.Context, string, []*driver.Message) error { return errReached }
func (b namesBroker) OpenSubscription(context.Context, string, driver.SubscriptionOptions) (driver.Subscription, error) {
	return nil, errReached
}
func (b namesBroker) Capabilities() driver.Capabilities { return b.caps }
func (b namesBroker) Traits() driver.Traits             { return driver.Traits{} }
func (b namesBroker) Close() error                      { return nil }

// CheckNames runs each case through the portable Publish and Subscribe of a
// client whose broker reports caps (an adapter's TopicNames and
// GroupNames), and fails t unless the accepted names reach the broker and
// the others fail at once with an error wrapping ErrInvalid that names the
// broker (caps.Broker).
func CheckNames(t *testing.T, caps driver.Capabilities, cases []NameCase) {
	t.Helper()
	c := pubsub.NewClient(namesBroker{caps: caps})
	defer c.Close()
	ctx := context.Background()
	for _, tc := range cases {
		var errs []error
		var opts []pubsub.SubscribeOption
		topic := tc.Topic
		if tc.Group != "" {
			topic, opts = "t", []pubsub.SubscribeOption{pubsub.Group(tc.Group)}
		} else {
			errs = append(errs, c.Publish(ctx, topic, &pubsub.Message{ID: "1"}))
		}
		_, err := c.Subscribe(ctx, topic, opts...)
		errs = append(errs, err)
		for _, err := range errs {
			switch {
			case tc.OK && !errors.Is(err, errReached):
				t.Errorf("topic %q group %q: %v, want the name accepted", tc.Topic, tc.Group, err)
			case !tc.OK && (!errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), caps.Broker)):
				t.Errorf("topic %q group %q: %v, want ErrInvalid naming %s", tc.Topic, tc.Group, err, caps.Broker)
			}
		}
	}
}

// CheckOpenRefusesScheme fails t unless open (an adapter's Open) refuses
// url, whose scheme is another adapter's, with an error wrapping
// ErrInvalid that names the scheme, before connecting anywhere.
func CheckOpenRefusesScheme(t *testing.T, open func(context.Context, string) (*pubsub.Client, error), url, scheme string) {
	t.Helper()
	c, err := open(context.Background(), url)
	if err == nil {
		c.Close()
		t.Fatalf("Open(%q) succeeded, want an error", url)
	}
	if !errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), `"`+scheme+`"`) {
		t.Fatalf("Open(%q) = %v, want ErrInvalid naming the scheme %q", url, err, scheme)
	}
}
