package pubsub

import (
	"context"
	"fmt"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// TopicInfo, GroupInfo and PartitionLag are what Topics and Groups report
// (see driver.Inspector).
type (
	TopicInfo    = driver.TopicInfo
	GroupInfo    = driver.GroupInfo
	PartitionLag = driver.PartitionLag
)

// inspector returns the adapter's driver.Inspector, or an error wrapping
// ErrUnsupported.
func (c *Client) inspector(what string) (driver.Inspector, error) {
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("pubsub: %s: %w", what, ErrClosed)
	}
	in, ok := c.drv.(driver.Inspector)
	if !ok {
		return nil, fmt.Errorf("pubsub: %s: the adapter cannot list topics or groups: %w", what, ErrUnsupported)
	}
	return in, nil
}

// Topics lists the broker's topics with their partitions and message counts
// where the adapter can (driver.Inspector); otherwise it returns an error
// wrapping ErrUnsupported. Counts the broker does not report are -1.
func (c *Client) Topics(ctx context.Context) ([]TopicInfo, error) {
	in, err := c.inspector("list topics")
	if err != nil {
		return nil, err
	}
	ts, err := in.Topics(ctx)
	if err != nil {
		return nil, fmt.Errorf("pubsub: list topics: %w", err)
	}
	return ts, nil
}

// Groups lists the consumer groups of topic ("" for every topic, where the
// broker can list them) with their lag: how many messages each has not
// acked yet. groups names the groups to report where the broker cannot list
// them (RabbitMQ) and narrows the list elsewhere. Adapters without
// driver.Inspector return an error wrapping ErrUnsupported.
func (c *Client) Groups(ctx context.Context, topic string, groups ...string) ([]GroupInfo, error) {
	if topic != "" {
		if err := c.topicNames.check(topic); err != nil {
			return nil, fmt.Errorf("pubsub: list groups: %w", err)
		}
	}
	for _, g := range groups {
		if err := c.groupNames.check(g); err != nil {
			return nil, fmt.Errorf("pubsub: list groups: %w", err)
		}
	}
	in, err := c.inspector("list groups")
	if err != nil {
		return nil, err
	}
	gs, err := in.Groups(ctx, topic, groups)
	if err != nil {
		if topic == "" {
			return nil, fmt.Errorf("pubsub: list groups: %w", err)
		}
		return nil, fmt.Errorf("pubsub: list groups of %q: %w", topic, err)
	}
	return gs, nil
}
