package memory

import (
	"context"
	"fmt"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// DeleteTopic implements driver.TopicDeleter: the topic, every group of it
// and their messages are dropped.
func (c *Conn) DeleteTopic(_ context.Context, topic string, _ []string) error {
	if c.isClosed() {
		return fmt.Errorf("mem: delete topic %q: %w", topic, driver.ErrClosed)
	}
	c.b.mu.Lock()
	delete(c.b.topics, topic)
	c.b.mu.Unlock()
	return nil
}
