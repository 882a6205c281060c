package kafka_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/kafka"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// TestOpenGivesUpOnASilentListenerWithinDialTimeout: a port that accepts
// the connection and never answers fails Open within dial_timeout, with an
// error that names the timeout; the default bound is 10s.
func TestOpenGivesUpOnASilentListenerWithinDialTimeout(t *testing.T) {
	if kafka.DefaultDialTimeout != 10*time.Second {
		t.Errorf("DefaultDialTimeout = %v, want the documented 10s", kafka.DefaultDialTimeout)
	}
	addr := integration.SilentListener(t)
	start := time.Now()
	_, err := pubsub.Open(context.Background(), "kafka://"+addr+"?dial_timeout=700ms")
	took := time.Since(start)
	if err == nil {
		t.Fatal("Open on a silent listener succeeded")
	}
	if took > 3*time.Second {
		t.Errorf("Open on a silent listener took %v, want about dial_timeout=700ms", took)
	}
	if !strings.Contains(err.Error(), "dial_timeout") || !strings.Contains(err.Error(), addr) {
		t.Errorf("error %q should name dial_timeout and the broker %s", err, addr)
	}
	t.Logf("silent listener: failed after %v: %v", took.Round(time.Millisecond), err)
}

// TestInvalidTopicNameFailsAtOnce: Publish and Subscribe to a topic Kafka
// cannot have (invalid UTF-8, a space, too long) fail at once with
// ErrInvalid naming the topic, instead of waiting for it.
func TestInvalidTopicNameFailsAtOnce(t *testing.T) {
	c := openClient(t, "auto_create=true")
	for _, topic := range []string{"bad\xff\xfe", "has space", "slash/topic", strings.Repeat("x", 250), ".."} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := time.Now()
		err := c.Publish(ctx, topic, &pubsub.Message{Payload: []byte("x")})
		if !errors.Is(err, pubsub.ErrInvalid) {
			t.Errorf("publish to %q: %v, want ErrInvalid", topic, err)
		}
		_, serr := c.Subscribe(ctx, topic, pubsub.Group("g"))
		if !errors.Is(serr, pubsub.ErrInvalid) {
			t.Errorf("subscribe to %q: %v, want ErrInvalid", topic, serr)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("topic %q: failing took %v, want at once", topic, took)
		}
		cancel()
	}
}
