package rocketmq

import (
	"context"
	"errors"
	"fmt"

	rmq "github.com/apache/rocketmq-clients/golang/v5"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// toRocket converts an omnibus message to a RocketMQ message on topic.
func toRocket(topic string, m *driver.Message) *rmq.Message {
	rm := &rmq.Message{Topic: topic, Body: m.Payload}
	if len(m.Payload) == 0 {
		rm.Body = []byte{0}
		rm.AddProperty(propEmpty, "1")
	}
	if m.ID != "" {
		rm.AddProperty(propID, m.ID)
		rm.SetKeys(m.ID)
	}
	if m.Key != "" {
		rm.AddProperty(propKey, m.Key)
	}
	for k, v := range m.Metadata {
		rm.AddProperty(propMetaPref+k, v)
	}
	return rm
}

// SendBatch publishes msgs, each with one Send, at most 8 at a time; the
// first failure (in msgs' order) is returned.
func (b *Broker) SendBatch(ctx context.Context, topic string, msgs []*driver.Message) error {
	if b.isClosed() {
		return errClosedBroker
	}
	if err := checkName("topic", topic, 127); err != nil {
		return err
	}
	if _, err := b.ensureTopic(ctx, topic, false); err != nil {
		return err
	}
	prod, err := b.producer(ctx, topic)
	if err != nil {
		return err
	}
	return eachParallel(len(msgs), func(i int) error {
		if err := b.send(ctx, prod, toRocket(topic, msgs[i])); err != nil {
			return fmt.Errorf("rocketmq: publish message %d (ID %q) to %q: %w", i, msgs[i].ID, topic, err)
		}
		return nil
	})
}

func (b *Broker) send(ctx context.Context, prod rmq.Producer, m *rmq.Message) error {
	ctx, cancel := context.WithTimeout(ctx, b.o.SendTimeout)
	defer cancel()
	res, err := prod.Send(ctx, m)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		if err = rpcErr(err); errors.Is(err, driver.ErrNotFound) {
			return err
		}
		return driver.Transient(err)
	}
	if len(res) == 0 {
		return fmt.Errorf("the proxy answered without a receipt")
	}
	return nil
}
