package pubsub

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// SubscribeOption configures Subscribe.
type SubscribeOption func(*subscribeOptions)

type subscribeOptions struct {
	group      string
	fromOldest bool
	prefetch   int
	ackFlush   time.Duration
	err        error
}

// Group makes the subscription a member of the named consumer group:
// members of one group compete for messages, distinct groups each receive
// every message. The same word on every broker.
func Group(name string) SubscribeOption {
	return func(o *subscribeOptions) {
		if name == "" {
			o.err = fmt.Errorf("group name is empty: %w", ErrInvalid)
		}
		o.group = name
	}
}

// FromOldest asks a group that has no position yet to start at the oldest
// retained message (Capabilities.Replay) instead of the newest.
func FromOldest() SubscribeOption { return func(o *subscribeOptions) { o.fromOldest = true } }

// Prefetch sets how many messages the subscription fetches ahead of Receive
// (default 64). The subscription holds at most 2×n undelivered messages.
func Prefetch(n int) SubscribeOption {
	return func(o *subscribeOptions) {
		if n < 1 {
			o.err = fmt.Errorf("prefetch %d: want at least 1: %w", n, ErrInvalid)
		}
		o.prefetch = n
	}
}

// Subscription is a stream of deliveries from one (topic, group). Receive,
// Ack and Nack are safe for concurrent use.
type Subscription struct {
	c     *Client
	topic string
	group string
	ds    driver.Subscription

	ch     chan *Delivery
	stop   context.CancelFunc
	loopWG sync.WaitGroup
	errMu  sync.Mutex
	err    error // terminal receive error

	closeOnce sync.Once
	closing   chan struct{}
	closeErr  error

	ackMu    sync.Mutex
	acks     []driver.AckID
	nacks    map[time.Duration][]driver.AckID
	ackDone  bool
	ackWake  chan struct{}
	ackWG    sync.WaitGroup
	ackFlush time.Duration
}

func newSubscription(c *Client, topic string, so subscribeOptions, ds driver.Subscription) *Subscription {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Subscription{
		c: c, topic: topic, group: so.group, ds: ds,
		ch:       make(chan *Delivery, so.prefetch),
		stop:     cancel,
		closing:  make(chan struct{}),
		nacks:    map[time.Duration][]driver.AckID{},
		ackWake:  make(chan struct{}, 1),
		ackFlush: so.ackFlush,
	}
	s.loopWG.Add(1)
	go s.fetchLoop(ctx, so.prefetch)
	s.ackWG.Add(1)
	go s.ackLoop()
	return s
}

// Topic returns the subscribed topic.
func (s *Subscription) Topic() string { return s.topic }

// Group returns the consumer group ("" for an anonymous subscription).
func (s *Subscription) Group() string { return s.group }

func terminal(err error) bool {
	var r driver.Retryable
	if errors.As(err, &r) {
		return !r.Retryable()
	}
	return errors.Is(err, ErrClosed) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrPermanent) || errors.Is(err, ErrInvalid)
}

func (s *Subscription) fetchLoop(ctx context.Context, max int) {
	defer s.loopWG.Done()
	defer close(s.ch)
	backoff := 10 * time.Millisecond
	for {
		msgs, err := s.ds.ReceiveBatch(ctx, max)
		if ctx.Err() != nil {
			s.giveBack(msgs)
			return
		}
		if err != nil {
			if terminal(err) {
				s.errMu.Lock()
				s.err = fmt.Errorf("pubsub: receive from %q (group %q): %w", s.topic, s.group, err)
				s.errMu.Unlock()
				return
			}
			s.c.logger.Warn("omnibus: receive failed, retrying", "topic", s.topic, "group", s.group, "error", err, "backoff", backoff)
			t := time.NewTimer(time.Duration(rand.Int64N(int64(backoff))) + backoff/2)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 10 * time.Millisecond
		for i, dm := range msgs {
			d := s.delivery(dm)
			select {
			case s.ch <- d:
			case <-ctx.Done():
				s.giveBack(msgs[i:])
				return
			}
		}
	}
}

// giveBack nacks fetched messages that no caller received.
func (s *Subscription) giveBack(msgs []*driver.Message) {
	if len(msgs) == 0 {
		return
	}
	s.ackMu.Lock()
	for _, m := range msgs {
		s.nacks[0] = append(s.nacks[0], m.AckID)
	}
	s.ackMu.Unlock()
	s.wakeAcker()
}

func (s *Subscription) delivery(dm *driver.Message) *Delivery {
	attempt := dm.Attempt
	if attempt <= 0 {
		attempt = 1
		if v, ok := dm.Metadata[MetaAttempt]; ok {
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				attempt = n
			}
		}
	}
	topic := dm.Topic
	if topic == "" {
		topic = s.topic
	}
	d := &Delivery{
		sub:   s,
		ackID: dm.AckID,
		msg: Message{
			ID: dm.ID, Key: dm.Key, Payload: dm.Payload, Metadata: dm.Metadata,
			Topic: topic, PublishedAt: dm.PublishedAt, Attempt: attempt,
		},
	}
	d.Message = &d.msg // one allocation for both
	return d
}

// Receive returns the next delivery. It blocks until one is available, ctx
// ends (ctx's error), or the subscription is closed (ErrClosed) or fails for
// good (an error wrapping the cause). Transient broker errors are retried
// inside, with backoff, and logged.
func (s *Subscription) Receive(ctx context.Context) (*Delivery, error) {
	select {
	case <-s.closing:
		return nil, fmt.Errorf("pubsub: receive from %q: %w", s.topic, ErrClosed)
	default:
	}
	select {
	case d, ok := <-s.ch:
		if !ok {
			return nil, s.termErr()
		}
		return d, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.closing:
		return nil, fmt.Errorf("pubsub: receive from %q: %w", s.topic, ErrClosed)
	}
}

func (s *Subscription) termErr() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	if s.err != nil {
		return s.err
	}
	return fmt.Errorf("pubsub: receive from %q: %w", s.topic, ErrClosed)
}

func (s *Subscription) wakeAcker() {
	select {
	case s.ackWake <- struct{}{}:
	default:
	}
}

func (s *Subscription) ackLoop() {
	defer s.ackWG.Done()
	var spare []driver.AckID // the acks slice of the previous flush, reused
	for {
		<-s.ackWake
		s.ackMu.Lock()
		acks, nacks, done := s.acks, s.nacks, s.ackDone
		s.acks = spare[:0]
		if len(nacks) > 0 {
			s.nacks = map[time.Duration][]driver.AckID{}
		} else {
			nacks = nil // s.nacks stays (empty) with enqueue
		}
		s.ackMu.Unlock()
		s.flush(acks, nacks)
		clear(acks)
		spare = acks
		if done {
			return
		}
	}
}

func (s *Subscription) flush(acks []driver.AckID, nacks map[time.Duration][]driver.AckID) {
	const chunk = 1000
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for len(acks) > 0 {
		n := min(len(acks), chunk)
		if err := s.ds.SendAcks(ctx, acks[:n]); err != nil {
			s.c.logger.Error("omnibus: ack failed; the messages will be redelivered", "topic", s.topic, "group", s.group, "count", n, "error", err)
		}
		acks = acks[n:]
	}
	for delay, ids := range nacks {
		for len(ids) > 0 {
			n := min(len(ids), chunk)
			if err := s.ds.SendNacks(ctx, ids[:n], delay); err != nil {
				s.c.logger.Error("omnibus: nack failed; the messages will be redelivered when the broker notices", "topic", s.topic, "group", s.group, "count", n, "error", err)
			}
			ids = ids[n:]
		}
	}
}

func (s *Subscription) enqueue(id driver.AckID, nack bool, delay time.Duration) error {
	s.ackMu.Lock()
	if s.ackDone {
		s.ackMu.Unlock()
		return fmt.Errorf("pubsub: ack on %q: subscription closed, the message will be redelivered: %w", s.topic, ErrClosed)
	}
	if nack {
		s.nacks[delay] = append(s.nacks[delay], id)
	} else {
		s.acks = append(s.acks, id)
	}
	s.ackMu.Unlock()
	s.wakeAcker()
	return nil
}

// Close stops receiving, gives back fetched messages nobody received,
// flushes pending acks and nacks, then closes the broker subscription; the
// broker redelivers every delivery that was not acked. Receive, Ack and Nack
// return ErrClosed afterwards. Close is idempotent.
func (s *Subscription) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.stop()
		// Drain what the fetch loop had buffered so it can exit.
		var left []*driver.Message
		for d := range s.ch {
			left = append(left, &driver.Message{AckID: d.ackID})
		}
		s.loopWG.Wait()
		s.giveBack(left)
		s.ackMu.Lock()
		s.ackDone = true
		s.ackMu.Unlock()
		s.wakeAcker()
		s.ackWG.Wait()
		if err := s.ds.Close(); err != nil {
			s.closeErr = fmt.Errorf("pubsub: close subscription to %q: %w", s.topic, err)
		}
		s.c.forget(s)
	})
	return s.closeErr
}

// Delivery is one received message, to be acked or nacked exactly once.
type Delivery struct {
	// Message is the received message; handlers must not modify it.
	Message *Message

	sub   *Subscription
	ackID driver.AckID
	done  atomic.Bool
	msg   Message // what Message points to
}

func (d *Delivery) settle(nack bool, delay time.Duration) error {
	if !d.done.CompareAndSwap(false, true) {
		return fmt.Errorf("pubsub: message %q: %w", d.Message.ID, ErrAlreadyAcked)
	}
	return d.sub.enqueue(d.ackID, nack, delay)
}

// Ack confirms the message was processed: it will not be redelivered. Acks
// are batched and sent in the background; a failed ack means redelivery,
// never loss. It returns ErrAlreadyAcked on a second Ack or Nack and
// ErrClosed when the subscription is closed (the message will be redelivered).
func (d *Delivery) Ack() error { return d.settle(false, 0) }

// Nack gives the message back for redelivery no sooner than delay (0 means
// at once). Where Capabilities.NackDelay is false the adapter holds the
// message in process for the delay. Errors as for Ack.
func (d *Delivery) Nack(delay time.Duration) error {
	if delay < 0 {
		delay = 0
	}
	return d.settle(true, delay)
}
