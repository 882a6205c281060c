package pubsub

import "context"

// Observer watches a Client's publishes: tracing and metrics plug in here
// (see middleware/telemetry) without pubsub importing them.
type Observer interface {
	// Publish is called once per Publish call, after validation and ID
	// generation and before sending, with the caller's context. It may add
	// metadata to msgs (a W3C traceparent, say): msgs are copies of the
	// caller's messages with Metadata maps of their own, so the caller's
	// messages and maps are never written. It returns a
	// function that Publish calls with the outcome (nil: all accepted).
	Publish(ctx context.Context, topic string, msgs []*Message) (done func(error))
}

// WithObserver adds an Observer to the client; several may be added and
// run in order.
func WithObserver(o Observer) ClientOption {
	return func(c *Client) {
		if o != nil {
			c.observers = append(c.observers, o)
		}
	}
}
