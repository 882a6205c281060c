package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

type subscription struct {
	b            *Broker
	topic, group string
	queue        string
	anon         bool
	qos          int

	mu     sync.Mutex
	cur    *consumer
	closed bool
}

// consumer is one channel consuming the subscription's queue. Delivery tags
// are per channel, so acks for a consumer whose channel died are void (the
// broker redelivers those messages).
type consumer struct {
	ch         acker
	deliveries <-chan amqp.Delivery

	mu   sync.Mutex
	base uint64          // every delivery tag below base is settled
	done map[uint64]bool // tags >= base already settled one by one
}

// acker is the part of *amqp.Channel that settles deliveries.
type acker interface {
	Ack(tag uint64, multiple bool) error
	Nack(tag uint64, multiple, requeue bool) error
	IsClosed() bool
	Close() error
}

// ackToken is the driver.AckID of a delivery.
type ackToken struct {
	c       *consumer
	tag     uint64
	d       amqp.Delivery
	attempt int
}

// retryable marks a receive error the portable layer should retry.
type retryable struct{ err error }

func (r retryable) Error() string   { return r.err.Error() }
func (r retryable) Unwrap() error   { return r.err }
func (r retryable) Retryable() bool { return true }

// OpenSubscription declares the subscription's queue (bound to the topic's
// exchange) and starts consuming it before returning, so every message
// published after it returns reaches the subscription.
func (b *Broker) OpenSubscription(ctx context.Context, topic string, opts driver.SubscriptionOptions) (driver.Subscription, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	if err := validTopic(topic); err != nil {
		return nil, err
	}
	s := &subscription{b: b, topic: topic, group: opts.Group}
	if opts.Group == "" {
		s.anon = true
		s.queue = shorten(topic + ".anon." + uuid.NewString())
	} else {
		s.queue = queueName(topic, opts.Group)
	}
	s.qos = b.opts.Prefetch
	if s.qos == 0 {
		s.qos = max(opts.MaxBatch, 1)
	}
	if len(b.opts.Groups) > 0 {
		if err := b.topo.ensureTopic(ctx, topic); err != nil {
			return nil, err
		}
	}
	if _, err := s.current(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// current returns the live consumer, starting one (declaring the topology
// again) when there is none.
func (s *subscription) current(ctx context.Context) (*consumer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("rabbitmq: subscription to %q: %w", s.topic, driver.ErrClosed)
	}
	if s.cur != nil {
		return s.cur, nil
	}
	ch, _, err := s.b.sub.channel(ctx)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*consumer, error) {
		ch.Close()
		return nil, err
	}
	if err := s.b.topo.declareSubscription(ch, s.topic, s.group, s.queue, s.anon); err != nil {
		return fail(err)
	}
	if err := ch.Qos(s.qos, 0, false); err != nil {
		return fail(fmt.Errorf("rabbitmq: set prefetch %d on queue %q: %w", s.qos, s.queue, err))
	}
	dl, err := ch.Consume(s.queue, "", false, false, false, false, nil)
	if err != nil {
		return fail(fmt.Errorf("rabbitmq: consume queue %q: %w", s.queue, err))
	}
	s.cur = &consumer{ch: ch, deliveries: dl, base: 1, done: map[uint64]bool{}}
	return s.cur, nil
}

// lost forgets c so that the next receive starts a new consumer.
func (s *subscription) lost(c *consumer) {
	s.mu.Lock()
	if s.cur == c {
		s.cur = nil
	}
	s.mu.Unlock()
	_ = c.ch.Close()
}

// ReceiveBatch returns up to max deliveries, waiting for the first. When the
// channel or connection is lost it starts a new consumer (after the
// connection is back) and carries on.
func (s *subscription) ReceiveBatch(ctx context.Context, max int) ([]*driver.Message, error) {
	c, err := s.current(ctx)
	if err != nil {
		if errors.Is(err, driver.ErrClosed) || errors.Is(err, driver.ErrInvalid) || ctx.Err() != nil {
			return nil, err
		}
		return nil, retryable{fmt.Errorf("rabbitmq: resume consuming %q: %w", s.queue, err)}
	}
	var out []*driver.Message
	select {
	case d, ok := <-c.deliveries:
		if !ok {
			s.lost(c)
			return nil, nil
		}
		out = append(out, s.message(c, d))
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for len(out) < max {
		select {
		case d, ok := <-c.deliveries:
			if !ok {
				return out, nil
			}
			out = append(out, s.message(c, d))
		default:
			return out, nil
		}
	}
	return out, nil
}

// brokerHeader reports headers the broker adds (not the publisher's metadata).
func brokerHeader(k string) bool {
	return k == "x-delivery-count" || k == "x-death" || strings.HasPrefix(k, "x-first-death-") || strings.HasPrefix(k, "x-last-death-")
}

func headerInt(v any) (int, bool) {
	switch n := v.(type) {
	case int:
		return n, true
	case int8:
		return int(n), true
	case int16:
		return int(n), true
	case int32:
		return int(n), true
	case int64:
		return int(n), true
	case uint8:
		return int(n), true
	case uint16:
		return int(n), true
	case uint32:
		return int(n), true
	case string:
		i, err := strconv.Atoi(n)
		return i, err == nil
	}
	return 0, false
}

func (s *subscription) message(c *consumer, d amqp.Delivery) *driver.Message {
	m := &driver.Message{ID: d.MessageId, Payload: d.Body, Topic: s.topic}
	if !d.Timestamp.IsZero() {
		m.PublishedAt = d.Timestamp
	}
	attempt, count, counted := 1, 0, false
	for k, v := range d.Headers {
		switch {
		case k == headerKey:
			m.Key, _ = v.(string)
		case k == headerAttempt:
			if n, ok := headerInt(v); ok && n > 0 {
				attempt = n
			}
		case k == "x-delivery-count":
			count, counted = headerInt(v)
		case brokerHeader(k):
		default:
			if m.Metadata == nil {
				m.Metadata = make(map[string]string, len(d.Headers))
			}
			if str, ok := v.(string); ok {
				m.Metadata[k] = str
			} else {
				m.Metadata[k] = fmt.Sprint(v)
			}
		}
	}
	switch {
	case counted && count > 0:
		attempt += count
	case !counted && d.Redelivered:
		attempt++
	}
	m.Attempt = attempt
	m.AckID = &ackToken{c: c, tag: d.DeliveryTag, d: d, attempt: attempt}
	return m
}

func tokens(ids []driver.AckID) (map[*consumer][]*ackToken, error) {
	by := map[*consumer][]*ackToken{}
	for _, id := range ids {
		t, ok := id.(*ackToken)
		if !ok {
			return nil, fmt.Errorf("rabbitmq: ack id %T is not from this adapter: %w", id, driver.ErrInvalid)
		}
		by[t.c] = append(by[t.c], t)
	}
	return by, nil
}

func tags(ts []*ackToken) []uint64 {
	out := make([]uint64, len(ts))
	for i, t := range ts {
		out[i] = t.tag
	}
	return out
}

// SendAcks acks the deliveries, coalescing runs into basic.ack multiple.
func (s *subscription) SendAcks(ctx context.Context, ids []driver.AckID) error {
	by, err := tokens(ids)
	if err != nil {
		return err
	}
	var errs []error
	for c, ts := range by {
		if err := c.settle(tags(ts), nil); err != nil {
			errs = append(errs, fmt.Errorf("rabbitmq: ack %d deliveries from %q: %w", len(ts), s.queue, err))
		}
	}
	return errors.Join(errs...)
}

// SendNacks gives deliveries back: see the package documentation for how
// each delay is honoured.
func (s *subscription) SendNacks(ctx context.Context, ids []driver.AckID, delay time.Duration) error {
	by, err := tokens(ids)
	if err != nil {
		return err
	}
	var errs []error
	for c, ts := range by {
		if err := s.nack(ctx, c, ts, delay); err != nil {
			errs = append(errs, fmt.Errorf("rabbitmq: nack %d deliveries from %q (delay %v): %w", len(ts), s.queue, delay, err))
		}
	}
	return errors.Join(errs...)
}

func (s *subscription) nack(ctx context.Context, c *consumer, ts []*ackToken, delay time.Duration) error {
	if delay <= 0 && s.b.requeue0 {
		return c.settle(nil, tags(ts))
	}
	if c.ch.IsClosed() {
		return errChannelGone(len(ts))
	}
	target := s.queue
	var prepare func(context.Context) error
	if delay > 0 {
		ms := delayBucket(delay)
		prepare = func(ctx context.Context) error {
			q, err := s.b.topo.ensureDelayQueue(ctx, s.queue, ms)
			target = q
			return err
		}
		if err := prepare(ctx); err != nil {
			// Redeliver at once rather than not at all.
			return errors.Join(fmt.Errorf("declare delay queue: %w", err), c.settle(nil, tags(ts)))
		}
	}
	out := make([]outMsg, len(ts))
	for i, t := range ts {
		h := amqp.Table{}
		for k, v := range t.d.Headers {
			if !brokerHeader(k) {
				h[k] = v
			}
		}
		h[headerAttempt] = strconv.Itoa(t.attempt + 1)
		out[i] = outMsg{
			exchange: "", key: target, mandatory: true, id: t.d.MessageId,
			pub: amqp.Publishing{
				Headers:         h,
				ContentType:     t.d.ContentType,
				ContentEncoding: t.d.ContentEncoding,
				DeliveryMode:    amqp.Persistent,
				CorrelationId:   t.d.CorrelationId,
				ReplyTo:         t.d.ReplyTo,
				MessageId:       t.d.MessageId,
				Timestamp:       t.d.Timestamp,
				Type:            t.d.Type,
				AppId:           t.d.AppId,
				Body:            t.d.Body,
			},
		}
	}
	// Route through the same target on every round (declared by prepare).
	deadline := time.Now().Add(s.b.opts.PublishTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var prep func(context.Context) error
	if prepare != nil {
		prep = func(ctx context.Context) error {
			if err := prepare(ctx); err != nil {
				return err
			}
			for i := range out {
				out[i].key = target
			}
			return nil
		}
	}
	if err := s.b.pool.send(ctx, out, deadline, prep); err != nil {
		// Some copies may be stored: requeue the originals anyway
		// (at-least-once; the copies carry the same message ID).
		return errors.Join(fmt.Errorf("republish for redelivery: %w", err), c.settle(nil, tags(ts)))
	}
	return c.settle(tags(ts), nil)
}

func errChannelGone(n int) error {
	return fmt.Errorf("the channel of these %d deliveries was closed; the broker redelivers them", n)
}

// settle acks (and requeues) delivery tags of this channel. A run of
// settled tags starting at the lowest unsettled one is acked with a single
// basic.ack multiple=true; other acks go out one by one at once, so that no
// ack waits behind a delivery still being handled.
func (c *consumer) settle(acks, requeue []uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch.IsClosed() {
		return errChannelGone(len(acks) + len(requeue))
	}
	type st struct {
		tag uint64
		ack bool
	}
	all := make([]st, 0, len(acks)+len(requeue))
	for _, t := range acks {
		all = append(all, st{t, true})
	}
	for _, t := range requeue {
		// Requeues go first: a later multiple ack must not cover them.
		if err := c.ch.Nack(t, false, true); err != nil {
			return fmt.Errorf("basic.nack: %w", err)
		}
		all = append(all, st{t, false})
	}
	slices.SortFunc(all, func(a, b st) int {
		switch {
		case a.tag < b.tag:
			return -1
		case a.tag > b.tag:
			return 1
		}
		return 0
	})
	var multi uint64
	var singles []uint64
	for _, x := range all {
		switch {
		case x.tag < c.base || c.done[x.tag]:
			// Already settled: a duplicate; never ack a tag twice.
		case x.tag == c.base:
			if x.ack {
				multi = x.tag
			}
			c.base++
			for c.done[c.base] {
				delete(c.done, c.base)
				c.base++
			}
		default:
			c.done[x.tag] = true
			if x.ack {
				singles = append(singles, x.tag)
			}
		}
	}
	if multi > 0 {
		if err := c.ch.Ack(multi, true); err != nil {
			return fmt.Errorf("basic.ack multiple up to %d: %w", multi, err)
		}
	}
	for _, t := range singles {
		if err := c.ch.Ack(t, false); err != nil {
			return fmt.Errorf("basic.ack %d: %w", t, err)
		}
	}
	return nil
}

// Close cancels the consumer by closing its channel: the broker requeues
// every delivery not acked. An anonymous subscription's queue is deleted.
func (s *subscription) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	c := s.cur
	s.cur = nil
	s.mu.Unlock()
	if c != nil {
		_ = c.ch.Close()
	}
	if s.anon && !s.b.closed.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// Best effort: x-expires deletes it later anyway.
		_, _ = s.b.sub.withAdmin(ctx, func(ch *amqp.Channel) error {
			_, err := ch.QueueDelete(s.queue, false, false, false)
			return err
		})
	}
	return nil
}
