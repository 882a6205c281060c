package rocketmq

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/consumer"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/google/uuid"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// delayLevels are the broker's default messageDelayLevel: level i+1 waits
// delayLevels[i].
var delayLevels = []time.Duration{
	time.Second, 5 * time.Second, 10 * time.Second, 30 * time.Second,
	time.Minute, 2 * time.Minute, 3 * time.Minute, 4 * time.Minute, 5 * time.Minute,
	6 * time.Minute, 7 * time.Minute, 8 * time.Minute, 9 * time.Minute, 10 * time.Minute,
	20 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour,
}

// delayLevel is the smallest delay level that waits at least d (the
// largest level for longer delays).
func delayLevel(d time.Duration) int {
	for i, l := range delayLevels {
		if l >= d {
			return i + 1
		}
	}
	return len(delayLevels)
}

// outcome is what the application decided for a delivery: ack, or a nack
// with a delay level.
type outcome struct {
	ack   bool
	level int
}

// delivery is a message held by the consumer callback until its outcome.
type delivery struct {
	done   atomic.Bool
	result chan outcome // buffered 1
}

type subscription struct {
	b        *Broker
	topic    string
	group    string
	pc       rmq.PushConsumer
	msgs     chan *driver.Message
	closed   chan struct{}
	closeMu  sync.Mutex
	isClosed bool
	// inflight is read-held by every running callback; Close write-locks
	// it to wait until every callback has returned its outcome.
	inflight sync.RWMutex
}

// OpenSubscription starts a push consumer for the group (or a private
// anonymous group) on topic.
func (b *Broker) OpenSubscription(ctx context.Context, topic string, opts driver.SubscriptionOptions) (driver.Subscription, error) {
	if b.isClosed() {
		return nil, errClosedBroker
	}
	if err := checkName("topic", topic, 127); err != nil {
		return nil, err
	}
	group := opts.Group
	if group == "" {
		group = "omnibus-anon-" + strings.ReplaceAll(uuid.NewString(), "-", "")
	} else if err := checkName("group", group, 120); err != nil {
		return nil, err
	}
	if err := b.ensureTopic(ctx, topic, b.o.Queues, true); err != nil {
		return nil, err
	}
	if len(b.o.Brokers) > 0 {
		// The retry topic the broker would create on the first nack: made
		// now, so that the consumer routes it from its start.
		if err := b.ensureTopic(ctx, "%RETRY%"+group, 1, true); err != nil {
			return nil, err
		}
	}
	// Each consumer has a client instance of its own (a client registers
	// a group once).
	instance := b.o.Instance + "-" + strings.ReplaceAll(uuid.NewString(), "-", "")
	// "Newest" is a timestamp: the queue offsets of messages stored from
	// one second before this call (by the broker's clock), looked up when
	// the consumer first balances its queues. (ConsumeFromLastOffset would
	// read each queue's end at that later moment and skip what was
	// published in between.)
	from := consumer.ConsumeFromTimestamp
	if opts.StartFromOldest || b.o.StartOldest {
		from = consumer.ConsumeFromFirstOffset
	}
	copts := []consumer.Option{
		consumer.WithNsResolver(b.resolver),
		consumer.WithGroupName(group),
		consumer.WithInstance(instance),
		consumer.WithConsumerModel(consumer.Clustering),
		consumer.WithConsumeFromWhere(from),
		consumer.WithConsumeTimestamp(time.Now().UTC().Add(-time.Second).Format("20060102150405")),
		consumer.WithConsumeMessageBatchMaxSize(1),
		consumer.WithMaxReconsumeTimes(int32(b.o.MaxReconsume)),
		consumer.WithConsumeGoroutineNums(b.o.Prefetch),
		consumer.WithPullBatchSize(32),
	}
	if b.o.AccessKey != "" {
		copts = append(copts, consumer.WithCredentials(b.o.credentials()))
	}
	pc, err := rmq.NewPushConsumer(copts...)
	if err != nil {
		return nil, fmt.Errorf("rocketmq: new consumer for group %q: %w", group, err)
	}
	s := &subscription{
		b: b, topic: topic, group: group, pc: pc,
		msgs:   make(chan *driver.Message),
		closed: make(chan struct{}),
	}
	if err := pc.Subscribe(topic, consumer.MessageSelector{}, s.consume); err != nil {
		return nil, fmt.Errorf("rocketmq: subscribe group %q to %q: %w", group, topic, err)
	}
	if err := pc.Start(); err != nil {
		return nil, driver.Transient(fmt.Errorf("rocketmq: start consumer of group %q on %q: %w", group, topic, err))
	}
	return s, nil
}

// consume is the push consumer's callback (one message per call): it hands
// the message to ReceiveBatch and waits for its ack or nack, or for Close.
func (s *subscription) consume(ctx context.Context, ms ...*primitive.MessageExt) (consumer.ConsumeResult, error) {
	if !s.inflight.TryRLock() {
		// Close has begun: the message goes back to the broker.
		return s.retry(ctx, 1), nil
	}
	defer s.inflight.RUnlock()
	for _, me := range ms {
		d := &delivery{result: make(chan outcome, 1)}
		m := fromRocket(s.topic, me)
		m.AckID = d
		select {
		case s.msgs <- m:
		case <-s.closed:
			return s.retry(ctx, 1), nil
		}
		select {
		case o := <-d.result:
			if !o.ack {
				return s.retry(ctx, o.level), nil
			}
		case <-s.closed:
			return s.retry(ctx, 1), nil
		}
	}
	return consumer.ConsumeSuccess, nil
}

func (s *subscription) retry(ctx context.Context, level int) consumer.ConsumeResult {
	if cc, ok := primitive.GetConcurrentlyCtx(ctx); ok {
		cc.DelayLevelWhenNextConsume = level
	}
	return consumer.ConsumeRetryLater
}

func fromRocket(topic string, me *primitive.MessageExt) *driver.Message {
	m := &driver.Message{
		Topic:       topic,
		Payload:     me.Body,
		ID:          me.GetProperty(propID),
		Key:         me.GetProperty(propKey),
		Attempt:     int(me.ReconsumeTimes) + 1,
		PublishedAt: time.UnixMilli(me.BornTimestamp),
	}
	if m.ID == "" {
		m.ID = me.MsgId
	}
	if me.GetProperty(propEmpty) == "1" {
		m.Payload = nil
	}
	for k, v := range me.GetProperties() {
		if name, ok := strings.CutPrefix(k, propMetaPref); ok {
			if m.Metadata == nil {
				m.Metadata = map[string]string{}
			}
			m.Metadata[name] = v
		}
	}
	return m
}

func (s *subscription) errClosed() error {
	return fmt.Errorf("rocketmq: subscription of group %q on %q closed: %w", s.group, s.topic, driver.ErrClosed)
}

// ReceiveBatch waits for one delivery, then takes whatever else is ready,
// up to max.
func (s *subscription) ReceiveBatch(ctx context.Context, max int) ([]*driver.Message, error) {
	var out []*driver.Message
	select {
	case m := <-s.msgs:
		out = append(out, m)
	case <-s.closed:
		return nil, s.errClosed()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for len(out) < max {
		select {
		case m := <-s.msgs:
			out = append(out, m)
		default:
			return out, nil
		}
	}
	return out, nil
}

func (s *subscription) settle(ids []driver.AckID, o outcome) error {
	for _, id := range ids {
		d, ok := id.(*delivery)
		if !ok {
			return fmt.Errorf("rocketmq: ack ID of type %T: %w", id, driver.ErrInvalid)
		}
		if d.done.Swap(true) {
			continue
		}
		d.result <- o
	}
	return nil
}

// SendAcks releases each delivery's callback with ConsumeSuccess.
func (s *subscription) SendAcks(_ context.Context, ids []driver.AckID) error {
	return s.settle(ids, outcome{ack: true})
}

// SendNacks releases each delivery's callback with ConsumeRetryLater at
// the smallest delay level of at least delay.
func (s *subscription) SendNacks(_ context.Context, ids []driver.AckID, delay time.Duration) error {
	if delay > delayLevels[len(delayLevels)-1] {
		s.b.log.Warn("rocketmq: nack delay above the broker's largest delay level; using 2h", "delay", delay, "group", s.group)
	}
	return s.settle(ids, outcome{level: delayLevel(delay)})
}

// Close hands held deliveries back (ConsumeRetryLater, 1 s) and shuts the
// consumer down, committing its offsets.
func (s *subscription) Close() error {
	s.closeMu.Lock()
	if s.isClosed {
		s.closeMu.Unlock()
		return nil
	}
	s.isClosed = true
	close(s.closed)
	s.closeMu.Unlock()
	// Every callback returns (acked deliveries with ConsumeSuccess, the
	// others with ConsumeRetryLater) before the consumer commits its
	// offsets and shuts down.
	s.inflight.Lock()
	defer s.inflight.Unlock()
	if err := s.pc.Shutdown(); err != nil {
		return fmt.Errorf("rocketmq: close consumer of group %q: %w", s.group, err)
	}
	return nil
}
