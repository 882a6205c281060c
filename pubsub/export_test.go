package pubsub

// WaitingMessages reports how many messages wait in c's send queue for
// topic (queued behind sends in flight), for tests that must know a call
// has queued.
func WaitingMessages(c *Client, topic string) int {
	c.mu.Lock()
	b := c.batchers[topic]
	c.mu.Unlock()
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.waitingN
}
