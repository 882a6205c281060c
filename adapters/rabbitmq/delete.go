package rabbitmq

import (
	"context"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DeleteTopic implements driver.TopicDeleter: the queues of the named groups
// (with their messages) and the topic's exchange are deleted. AMQP cannot
// list an exchange's queues: queues of groups not named stay.
func (b *Broker) DeleteTopic(ctx context.Context, topic string, groups []string) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	_, err := b.pub.withAdmin(ctx, func(ch *amqp.Channel) error {
		for _, g := range groups {
			if _, err := ch.QueueDelete(queueName(topic, g), false, false, false); err != nil {
				return fmt.Errorf("rabbitmq: delete queue %q: %w", queueName(topic, g), err)
			}
		}
		if err := ch.ExchangeDelete(topic, false, false); err != nil {
			return fmt.Errorf("rabbitmq: delete exchange %q: %w", topic, err)
		}
		return nil
	})
	b.topo.forget(topic)
	return err
}
