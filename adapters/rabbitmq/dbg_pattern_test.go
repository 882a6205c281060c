package rabbitmq_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
	"strconv"
)

// rawPublishCalls publishes n messages in calls of batch, each waiting for all its confirms.
func rawPublishCalls(ctx context.Context, conn *amqp.Connection, topic string, from, n, batch int) error {
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer ch.Close()
	if err := ch.Confirm(false); err != nil {
		return err
	}
	for i := 0; i < n; i += batch {
		k := min(batch, n-i)
		dcs := make([]*amqp.DeferredConfirmation, k)
		for j := 0; j < k; j++ {
			dcs[j], err = ch.PublishWithDeferredConfirmWithContext(ctx, topic, "", true, false, rawPublishing(from+i+j))
			if err != nil {
				return err
			}
		}
		for _, dc := range dcs {
			if !dc.Wait() {
				return fmt.Errorf("nack")
			}
		}
	}
	return nil
}

func TestDbgPattern(t *testing.T) {
	if os.Getenv("DBG_PATTERN") == "" {
		t.Skip()
	}
	url := integration.AMQP(t)
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	b := &testing.B{}
	_ = b
	const n = 40000
	for round := 0; round < 3; round++ {
		for _, mode := range []string{"stream", "calls512", "omnibus", "omnibus1ch"} {
			topic := fmt.Sprintf("dbg-%s-%d", mode, time.Now().UnixNano())
			ch, _ := conn.Channel()
			q := topic + ".q"
			ch.ExchangeDeclare(topic, "fanout", true, false, false, false, nil)
			ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": "classic"})
			ch.QueueBind(q, "", topic, false, nil)
			start := time.Now()
			var err error
			switch mode {
			case "stream":
				err = split(n, func(from, c int) error { return rawPublish(context.Background(), conn, topic, from, c) })
			case "stream8":
				err = split(n, func(from, c int) error {
					h := c / 2
					e := make(chan error, 1)
					go func() { e <- rawPublish(context.Background(), conn, topic, from, h) }()
					err := rawPublish(context.Background(), conn, topic, from+h, c-h)
					if e2 := <-e; e2 != nil {
						return e2
					}
					return err
				})
			case "calls512":
				err = split(n, func(from, c int) error { return rawPublishCalls(context.Background(), conn, topic, from, c, 512) })
			case "omnibus", "omnibus1ch":
				extra := ""
				if mode == "omnibus1ch" {
					extra = "&publish_channels=4"
				}
				c, err2 := pubsub.Open(context.Background(), url+"?queue_type=classic"+extra)
				if err2 != nil {
					t.Fatal(err2)
				}
				c.Publish(context.Background(), topic, &pubsub.Message{Payload: benchPayload})
				start = time.Now()
				err = split(n, func(from, n int) error {
					for i := 0; i < n; i += benchBatch {
						msgs := make([]*pubsub.Message, min(benchBatch, n-i))
						for j := range msgs {
							msgs[j] = &pubsub.Message{ID: "bench-" + strconv.Itoa(from+i+j), Payload: benchPayload, Metadata: map[string]string{"x-bench": "1"}}
						}
						if err := c.Publish(context.Background(), topic, msgs...); err != nil {
							return err
						}
					}
					return nil
				})
				c.Close()
			case "calls2048":
				err = split(n, func(from, c int) error { return rawPublishCalls(context.Background(), conn, topic, from, c, 2048) })
			}
			if err != nil {
				t.Fatal(err)
			}
			fmt.Printf("%-10s %6.0f msg/s\n", mode, n/time.Since(start).Seconds())
			ch.QueueDelete(q, false, false, false)
			ch.ExchangeDelete(topic, false, false)
			ch.Close()
		}
	}
}
