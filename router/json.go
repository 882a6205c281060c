package router

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/omnibusmq/omnibus/pubsub"
)

// JSON returns a Handler that decodes each message's payload as JSON into a
// T and calls fn with it. A payload that does not decode is a permanent
// error (pubsub.Permanent): retrying cannot fix it, so Retry stops and
// Poison moves the message to the poison topic at once.
func JSON[T any](fn func(ctx context.Context, m *pubsub.Message, v T) error) Handler {
	return func(ctx context.Context, m *pubsub.Message) error {
		var v T
		if err := json.Unmarshal(m.Payload, &v); err != nil {
			return pubsub.Permanent(fmt.Errorf("router: decode message %q from %q as %T: %w", m.ID, m.Topic, v, err))
		}
		return fn(ctx, m, v)
	}
}
