package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"sort"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Topics implements driver.Inspector: AMQP 0-9-1 cannot list exchanges or
// queues, so it returns an error wrapping driver.ErrUnsupported that says
// what to use instead.
func (b *Broker) Topics(context.Context) ([]driver.TopicInfo, error) {
	return nil, fmt.Errorf("rabbitmq: AMQP cannot list exchanges or queues: name a topic and its groups "+
		"(omnibus groups URL TOPIC --group G) for their message counts, or use rabbitmqctl list_queues: %w", driver.ErrUnsupported)
}

// Groups implements driver.Inspector for the named groups of topic (the
// groups argument, else the URL's groups=): AMQP cannot list a topic's
// queues. It declares each group's queue passively (on a partitioned
// group, each partition's queue, reported in Partitions too): Lag is the
// messages ready in them, Members the consumers (the most on any one
// queue). Deliveries not yet acked and nacks waiting out their delay are
// not counted, and InFlight is unknown (-1): the AMQP answer holds ready
// messages only. A group whose
// queue does not exist is an error wrapping driver.ErrNotFound. Each
// answer waits at most until the connection's heartbeat declares a silent
// broker dead.
func (b *Broker) Groups(ctx context.Context, topic string, groups []string) ([]driver.GroupInfo, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	if topic == "" {
		return nil, fmt.Errorf("rabbitmq: AMQP cannot list exchanges: name the topic: %w", driver.ErrUnsupported)
	}
	if err := validTopic(topic); err != nil {
		return nil, err
	}
	if len(groups) == 0 {
		groups = b.opts.Groups
	}
	if len(groups) == 0 {
		return nil, fmt.Errorf("rabbitmq: AMQP cannot list the queues of topic %q: name its groups (omnibus groups --group G, or groups= in the URL): %w", topic, driver.ErrUnsupported)
	}
	out := make([]driver.GroupInfo, 0, len(groups))
	_, err := b.pub.withAdmin(ctx, func(ch *amqp.Channel) error {
		for _, g := range groups {
			gi := driver.GroupInfo{Topic: topic, Group: g, InFlight: -1}
			queues := b.topo.groupQueues(topic, g)
			for i, q := range queues {
				st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
				if err != nil {
					var ae *amqp.Error
					if errors.As(err, &ae) && ae.Code == amqp.NotFound {
						return fmt.Errorf("rabbitmq: group %q of topic %q: queue %q does not exist: %w", g, topic, q, driver.ErrNotFound)
					}
					return fmt.Errorf("rabbitmq: group %q of topic %q: declare queue %q passively: %w", g, topic, q, err)
				}
				gi.Lag += int64(st.Messages)
				gi.Members = max(gi.Members, st.Consumers)
				if len(queues) > 1 { // partitions=N: one queue per partition
					gi.Partitions = append(gi.Partitions, driver.PartitionLag{Partition: int32(i), Committed: -1, End: -1, Lag: int64(st.Messages)})
				}
			}
			out = append(out, gi)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Group < out[j].Group })
	return out, nil
}

var _ driver.Inspector = (*Broker)(nil)
