package rabbitmq_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/omnibusmq/omnibus/adapters/rabbitmq"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

func TestOpenAgainstASilentServerTimesOutWithAClearTransientError(t *testing.T) {
	for _, scheme := range []string{"amqp", "amqps"} {
		t.Run(scheme, func(t *testing.T) {
			addr := integration.SilentListener(t)
			start := time.Now()
			_, err := pubsub.Open(context.Background(), scheme+"://guest:guest@"+addr+"/?connection_timeout=500ms")
			took := time.Since(start)
			if err == nil {
				t.Fatal("Open succeeded against a server that never answers")
			}
			t.Logf("after %v: %v", took.Round(time.Millisecond), err)
			if took > 3*time.Second {
				t.Errorf("Open took %v, want about the 500ms connection_timeout", took)
			}
			msg := err.Error()
			if !strings.Contains(msg, "no answer") || !strings.Contains(msg, "connection_timeout") {
				t.Errorf("error %q does not say the server did not answer within connection_timeout", msg)
			}
			if strings.Contains(msg, "not AMQP") || strings.Contains(msg, "did not answer TLS") || errors.Is(err, pubsub.ErrPermanent) {
				t.Errorf("error %q calls a silent server a protocol mismatch (permanent)", msg)
			}
		})
	}
}

func TestOversizedHeaderFieldsFailAtOnceNamingTheFieldAndLimit(t *testing.T) {
	url := integration.AMQP(t)
	c := openClient(t, withParams(url, "unroutable=drop&publish_timeout=20s"))
	topic := topicName(t)
	big := func(n int) string { return strings.Repeat("x", n) }
	cases := []struct {
		name    string
		msg     *pubsub.Message
		mention []string
	}{
		{"MetadataKeyOver255Bytes", &pubsub.Message{Payload: []byte("p"), Metadata: map[string]string{big(256): "v"}}, []string{"metadata key", "255"}},
		{"IDOver255Bytes", &pubsub.Message{ID: big(10 << 10), Payload: []byte("p")}, []string{"ID", "255"}},
		{"KeyOver255Bytes", &pubsub.Message{Key: big(1 << 20), Payload: []byte("p")}, []string{"Key", "255"}},
		{"MetadataOverTheFrameSize", &pubsub.Message{Payload: []byte("p"), Metadata: map[string]string{"a": big(100 << 10), "b": big(100 << 10)}}, []string{"metadata", "131072"}},
		{"BrokerHeaderInMetadata", &pubsub.Message{Payload: []byte("p"), Metadata: map[string]string{"x-delivery-count": "8"}}, []string{"x-delivery-count", "reserved"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := c.Driver().(*rabbitmq.Broker).Reconnects()
			start := time.Now()
			err := c.Publish(context.Background(), topic, tc.msg)
			took := time.Since(start)
			if !errors.Is(err, pubsub.ErrInvalid) {
				t.Fatalf("Publish = %v, want ErrInvalid", err)
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
			if took > time.Second {
				t.Errorf("Publish took %v, want an immediate error", took)
			}
			if n := c.Driver().(*rabbitmq.Broker).Reconnects() - before; n != 0 {
				t.Errorf("%d reconnects: the message reached the connection", n)
			}
		})
	}
	// The connection is fine for a message at the limits.
	ok := &pubsub.Message{ID: big(255), Key: big(255), Payload: []byte("p"), Metadata: map[string]string{big(255): big(60 << 10)}}
	if err := c.Publish(context.Background(), topic, ok); err != nil {
		t.Fatalf("a message at the limits: %v", err)
	}
}

// A header set by a publisher (not by the broker's count, nor by the
// adapter's own redelivery) must not raise Attempt.
func TestPublisherSetDeliveryCountDoesNotRaiseAttempt(t *testing.T) {
	url := integration.AMQP(t)
	for _, qt := range []string{rabbitmq.QueueQuorum, rabbitmq.QueueClassic} {
		t.Run(qt, func(t *testing.T) {
			c := openClient(t, withParams(url, "queue_type="+qt))
			topic := topicName(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			sub, err := c.Subscribe(ctx, topic, pubsub.Group("g"))
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			// A raw AMQP publisher that sets the broker's header itself.
			conn, err := amqp.Dial(url)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ch, err := conn.Channel()
			if err != nil {
				t.Fatal(err)
			}
			err = ch.PublishWithContext(ctx, topic, "", false, false, amqp.Publishing{
				MessageId: "m1", Body: []byte("x"), Headers: amqp.Table{"x-delivery-count": int64(7)},
			})
			if err != nil {
				t.Fatal(err)
			}
			d, err := sub.Receive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if d.Message.Attempt != 1 {
				t.Errorf("first delivery: Attempt = %d, want 1 (the publisher's x-delivery-count=7 must not count)", d.Message.Attempt)
			}
			if err := d.Nack(0); err != nil {
				t.Fatal(err)
			}
			d, err = sub.Receive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if d.Message.Attempt != 2 {
				t.Errorf("after one nack: Attempt = %d, want 2", d.Message.Attempt)
			}
			_ = d.Ack()
		})
	}
}
