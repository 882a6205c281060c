package postgres

import (
	"context"
	"fmt"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// DeleteTopic implements driver.TopicDeleter: every queued message and every
// group of the topic are deleted, in one statement.
func (b *Broker) DeleteTopic(ctx context.Context, topic string, _ []string) error {
	if b.isClosed() {
		return fmt.Errorf("postgres: delete topic %q: %w", topic, driver.ErrClosed)
	}
	_, err := b.pool.Exec(ctx, `WITH m AS (DELETE FROM `+b.queue+` WHERE topic = $1) DELETE FROM `+b.groups+` WHERE topic = $1`, topic)
	if err != nil {
		return fmt.Errorf("postgres: delete topic %q: %w", topic, err)
	}
	return nil
}
