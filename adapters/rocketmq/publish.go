package rocketmq

import (
	"context"
	"fmt"
	"sync"

	"github.com/apache/rocketmq-client-go/v2/primitive"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// toRocket converts an omnibus message to a RocketMQ message on topic.
func toRocket(topic string, m *driver.Message) *primitive.Message {
	rm := primitive.NewMessage(topic, m.Payload)
	if len(m.Payload) == 0 {
		rm.Body = []byte{0}
		rm.WithProperty(propEmpty, "1")
	}
	if m.ID != "" {
		rm.WithProperty(propID, m.ID)
		rm.WithKeys([]string{m.ID})
	}
	if m.Key != "" {
		rm.WithProperty(propKey, m.Key)
		rm.WithShardingKey(m.Key)
	}
	for k, v := range m.Metadata {
		rm.WithProperty(propMetaPref+k, v)
	}
	return rm
}

// SendBatch publishes msgs: messages without a Key as RocketMQ batches,
// messages with a Key one by one per key (keys in parallel), each through
// the hash queue selector.
func (b *Broker) SendBatch(ctx context.Context, topic string, msgs []*driver.Message) error {
	if b.isClosed() {
		return errClosedBroker
	}
	if err := checkName("topic", topic, 127); err != nil {
		return err
	}
	if err := b.ensureTopic(ctx, topic, b.o.Queues, false); err != nil {
		return err
	}
	var plain []*primitive.Message
	var plainIdx []int
	keyed := map[string][]int{}
	var keys []string
	for i, m := range msgs {
		if m.Key == "" {
			plain = append(plain, toRocket(topic, m))
			plainIdx = append(plainIdx, i)
			continue
		}
		if _, ok := keyed[m.Key]; !ok {
			keys = append(keys, m.Key)
		}
		keyed[m.Key] = append(keyed[m.Key], i)
	}
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		firstIdx = len(msgs)
	)
	fail := func(i int, err error) {
		mu.Lock()
		defer mu.Unlock()
		if i < firstIdx {
			firstIdx, firstErr = i, err
		}
	}
	sem := make(chan struct{}, 8)
	for _, k := range keys {
		idx := keyed[k]
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			for _, i := range idx {
				if err := b.send(ctx, topic, toRocket(topic, msgs[i])); err != nil {
					fail(i, fmt.Errorf("rocketmq: publish message %d (ID %q) to %q: %w", i, msgs[i].ID, topic, err))
					return
				}
			}
		}()
	}
	// Unkeyed messages: batches of at most MaxBatchBytes.
	start, size := 0, 0
	flush := func(end int) {
		if end == start {
			return
		}
		if err := b.send(ctx, topic, plain[start:end]...); err != nil {
			fail(plainIdx[start], fmt.Errorf("rocketmq: publish messages %d.. (ID %q) to %q: %w", plainIdx[start], msgs[plainIdx[start]].ID, topic, err))
		}
		start, size = end, 0
	}
	for i, rm := range plain {
		n := len(rm.Body) + 256
		for k, v := range rm.GetProperties() {
			n += len(k) + len(v) + 2
		}
		if size+n > b.o.MaxBatchBytes && i > start {
			flush(i)
		}
		size += n
	}
	flush(len(plain))
	wg.Wait()
	return firstErr
}

func (b *Broker) send(ctx context.Context, topic string, ms ...*primitive.Message) error {
	ctx, cancel := context.WithTimeout(ctx, b.o.SendTimeout)
	defer cancel()
	res, err := b.prod.SendSync(ctx, ms...)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return err
	}
	if res.Status != primitive.SendOK {
		return fmt.Errorf("broker answered status %d, not SEND_OK", res.Status)
	}
	return nil
}
