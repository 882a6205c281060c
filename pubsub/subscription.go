package pubsub

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/omnibusmq/omnibus/internal/backoff"
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
// retained message instead of the newest. It matters only where
// Capabilities.Replay is true (Kafka); elsewhere a new group starts with what
// its broker kept for it (see each adapter) and the option has no effect, so
// portable code can always pass it.
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
//
// A background fetch loop calls the driver's ReceiveBatch and appends whole
// batches to a buffer that Receive takes from under a mutex: a delivery costs
// no goroutine hand-off of its own, only a batch does.
type Subscription struct {
	c     *Client
	topic string
	group string
	ds    driver.Subscription

	stop      context.CancelFunc
	loopWG    sync.WaitGroup
	fetchDone chan struct{} // closed when the fetch loop has ended
	errMu     sync.Mutex
	err       error // terminal receive error

	bufMu    sync.Mutex
	buf      []*Delivery // fetched, not yet received; buf[head:] are live
	head     int
	prefetch int
	waiters  int           // Receive calls waiting for avail
	full     bool          // the fetch loop waits for room
	avail    chan struct{} // cap 1: buf has deliveries, or the fetching turn is free (a hint; re-check)
	room     chan struct{} // cap 1: buf dropped below prefetch

	closeOnce sync.Once
	closing   chan struct{}
	closeErr  error

	// ackMu guards acks, nacks and ackDone; inline acks
	// (driver.Traits.InlineAcks) hold it for reading so that none is sent
	// after Close began.
	ackMu   sync.RWMutex
	acks    []driver.AckID
	nacks   map[time.Duration][]driver.AckID
	ackDone bool
	ackWake chan struct{}
	ackWG   sync.WaitGroup
}

func newSubscription(c *Client, topic string, so subscribeOptions, ds driver.Subscription) *Subscription {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Subscription{
		c: c, topic: topic, group: so.group, ds: ds,
		stop:      cancel,
		fetchDone: make(chan struct{}),
		prefetch:  so.prefetch,
		avail:     make(chan struct{}, 1),
		room:      make(chan struct{}, 1),
		closing:   make(chan struct{}),
		nacks:     map[time.Duration][]driver.AckID{},
		ackWake:   make(chan struct{}, 1),
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

// terminal reports whether a ReceiveBatch error ends the subscription:
// errors marked driver.Transient never do; the sentinels of a closed,
// missing, permanent or invalid thing do; anything else is retried.
func terminal(err error) bool {
	if driver.IsTransient(err) {
		return false
	}
	return errors.Is(err, ErrClosed) || errors.Is(err, ErrNotFound) || errors.Is(err, ErrPermanent) || errors.Is(err, ErrInvalid)
}

// fetchLoop fills the buffer: it asks the driver for up to max messages
// whenever fewer than prefetch (= max) are buffered, so at most 2×prefetch
// deliveries wait at any time.
var receiveRetry = backoff.Policy{Initial: 10 * time.Millisecond, Max: 5 * time.Second}

func (s *Subscription) fetchLoop(ctx context.Context, max int) {
	defer s.loopWG.Done()
	defer close(s.fetchDone)
	failures := 0
	for {
		msgs, err := s.ds.ReceiveBatch(ctx, max)
		if ctx.Err() != nil {
			return // Close: the driver's Close redelivers what nobody received
		}
		if err != nil {
			if terminal(err) {
				s.errMu.Lock()
				s.err = fmt.Errorf("pubsub: receive from %q (group %q): %w", s.topic, s.group, err)
				s.errMu.Unlock()
				return
			}
			failures++
			s.c.logger.Warn("omnibus: receive failed, retrying", "topic", s.topic, "group", s.group, "error", err, "failures", failures)
			if !receiveRetry.Sleep(ctx, failures) {
				return
			}
			continue
		}
		failures = 0
		if len(msgs) == 0 {
			continue
		}
		ds := make([]Delivery, len(msgs)) // one allocation per batch
		s.bufMu.Lock()
		for i, dm := range msgs {
			s.buf = append(s.buf, s.delivery(&ds[i], dm))
		}
		if s.waiters > 0 {
			s.signal(s.avail)
		}
		for len(s.buf)-s.head >= s.prefetch {
			s.full = true
			s.bufMu.Unlock()
			select {
			case <-s.room:
			case <-ctx.Done():
				return // Close gives the buffered deliveries back
			}
			s.bufMu.Lock()
		}
		s.full = false
		s.bufMu.Unlock()
	}
}

func (s *Subscription) signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (s *Subscription) delivery(d *Delivery, dm *driver.Message) *Delivery {
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
	d.sub = s
	d.ackID = dm.AckID
	d.lease = dm.Lease
	d.msg = Message{
		ID: dm.ID, Key: dm.Key, Payload: dm.Payload, Metadata: dm.Metadata,
		Topic: topic, PublishedAt: dm.PublishedAt, Attempt: attempt,
	}
	d.Message = &d.msg // one allocation for both
	return d
}

// take removes the oldest buffered delivery, or returns nil. Deliveries
// whose lease was revoked are dropped (driver.Lease). bufMu is held.
func (s *Subscription) take() *Delivery {
	if s.head == len(s.buf) {
		return nil
	}
	d := s.buf[s.head]
	s.buf[s.head] = nil
	s.head++
	for d.lease.Revoked() && s.head < len(s.buf) {
		d = s.buf[s.head]
		s.buf[s.head] = nil
		s.head++
	}
	if d.lease.Revoked() {
		d = nil
	}
	if s.head == len(s.buf) {
		s.buf, s.head = s.buf[:0], 0
	} else if s.head >= 1024 && s.head >= len(s.buf)/2 {
		n := copy(s.buf, s.buf[s.head:])
		clear(s.buf[n:])
		s.buf, s.head = s.buf[:n], 0
	}
	if s.full && len(s.buf)-s.head < s.prefetch {
		s.full = false
		s.signal(s.room)
	}
	if s.waiters > 0 && s.head < len(s.buf) {
		s.signal(s.avail) // pass the turn on to the next waiting Receive
	}
	return d
}

// Receive returns the next delivery. It blocks until one is available, ctx
// ends (ctx's error), or the subscription is closed (ErrClosed) or fails for
// good (an error wrapping the cause). Transient broker errors are retried
// inside, with backoff, and logged.
func (s *Subscription) Receive(ctx context.Context) (*Delivery, error) {
	waiting := false
	defer func() {
		if waiting {
			s.bufMu.Lock()
			s.waiters--
			s.bufMu.Unlock()
		}
	}()
	for {
		select {
		case <-s.closing:
			return nil, fmt.Errorf("pubsub: receive from %q: %w", s.topic, ErrClosed)
		default:
		}
		s.bufMu.Lock()
		if d := s.take(); d != nil {
			if waiting {
				s.waiters--
				waiting = false
			}
			s.bufMu.Unlock()
			return d, nil
		}
		if !waiting {
			s.waiters++
			waiting = true
		}
		s.bufMu.Unlock()
		select {
		case <-s.avail:
		case <-s.fetchDone:
			s.bufMu.Lock()
			d := s.take()
			if d != nil {
				if waiting {
					s.waiters--
					waiting = false
				}
			}
			s.bufMu.Unlock()
			if d != nil {
				return d, nil
			}
			select {
			case <-s.closing:
				return nil, fmt.Errorf("pubsub: receive from %q: %w", s.topic, ErrClosed)
			default:
			}
			return nil, s.termErr()
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.closing:
			return nil, fmt.Errorf("pubsub: receive from %q: %w", s.topic, ErrClosed)
		}
	}
}

// ReceiveBatch waits like Receive for the next delivery, then takes up to
// max-1 more that are already fetched, without waiting for them, and
// appends them all to dst in receive order. It returns dst unchanged and an
// error as Receive does. A consumer that dispatches deliveries to workers
// (the router's ordered modes) pays one buffer lock per batch instead of
// one per delivery.
func (s *Subscription) ReceiveBatch(ctx context.Context, dst []*Delivery, max int) ([]*Delivery, error) {
	d, err := s.Receive(ctx)
	if err != nil {
		return dst, err
	}
	dst = append(dst, d)
	if max <= 1 {
		return dst, nil
	}
	s.bufMu.Lock()
	for n := 1; n < max; n++ {
		d := s.take()
		if d == nil {
			break
		}
		dst = append(dst, d)
	}
	s.bufMu.Unlock()
	return dst, nil
}

func (s *Subscription) termErr() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	if s.err != nil {
		return s.err
	}
	return fmt.Errorf("pubsub: receive from %q: %w", s.topic, ErrClosed)
}

func (s *Subscription) wakeAcker() { s.signal(s.ackWake) }

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

// A SendAcks or SendNacks that fails with a driver.Transient error is sent
// again, up to ackAttempts times in all (within the flush's 30 s), before
// the failure is logged and left to the broker's redelivery.
const ackAttempts = 5

var ackRetry = backoff.Policy{Initial: 20 * time.Millisecond, Max: time.Second}

func (s *Subscription) flush(acks []driver.AckID, nacks map[time.Duration][]driver.AckID) {
	const chunk = 1000
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for len(acks) > 0 {
		n := min(len(acks), chunk)
		part := acks[:n]
		if err := ackRetry.Retry(ctx, ackAttempts, driver.IsTransient, func() error { return s.ds.SendAcks(ctx, part) }); err != nil {
			s.c.logger.Error("omnibus: ack failed; the messages will be redelivered", "topic", s.topic, "group", s.group, "count", n, "error", err)
		}
		acks = acks[n:]
	}
	for delay, ids := range nacks {
		for len(ids) > 0 {
			n := min(len(ids), chunk)
			part := ids[:n]
			if err := ackRetry.Retry(ctx, ackAttempts, driver.IsTransient, func() error { return s.ds.SendNacks(ctx, part, delay) }); err != nil {
				s.c.logger.Error("omnibus: nack failed; the messages will be redelivered when the broker notices", "topic", s.topic, "group", s.group, "count", n, "error", err)
			}
			ids = ids[n:]
		}
	}
}

// ackInline sends one ack on the caller's goroutine (Traits.InlineAcks). It
// reports done=false when the ack failed transiently and should go to the
// background flush, which retries it.
func (s *Subscription) ackInline(id driver.AckID) (done bool, err error) {
	s.ackMu.RLock()
	defer s.ackMu.RUnlock()
	if s.ackDone {
		return true, fmt.Errorf("pubsub: ack on %q: subscription closed, the message will be redelivered: %w", s.topic, ErrClosed)
	}
	ids := [1]driver.AckID{id}
	err = s.ds.SendAcks(context.Background(), ids[:])
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrRevoked):
		return true, fmt.Errorf("pubsub: ack on %q: %w", s.topic, err)
	case driver.IsTransient(err):
		return false, nil
	}
	s.c.logger.Error("omnibus: ack failed; the message will be redelivered", "topic", s.topic, "group", s.group, "error", err)
	return true, nil
}

func (s *Subscription) enqueue(id driver.AckID, nack bool, delay time.Duration) error {
	if !nack && s.c.inlineAcks {
		if done, err := s.ackInline(id); done {
			return err
		}
		// A transient failure: the background flush sends it again.
	}
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

// Close stops receiving, drops fetched messages nobody received, flushes
// pending acks and nacks, then closes the broker subscription; the broker
// redelivers every delivery that was not acked, in its own order. Receive, Ack and Nack
// return ErrClosed afterwards. Close is idempotent.
func (s *Subscription) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.stop()
		s.loopWG.Wait()
		// What the fetch loop buffered and nobody received is neither
		// acked nor nacked: the driver's Close redelivers every unacked
		// delivery, in the broker's own order (a nack could put it behind
		// later messages of its key: RabbitMQ republishes a nack).
		s.bufMu.Lock()
		s.buf, s.head = nil, 0
		s.bufMu.Unlock()
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
	lease *driver.Lease // nil unless the adapter can revoke it
	done  atomic.Bool
	msg   Message // what Message points to
}

func (d *Delivery) settle(nack bool, delay time.Duration) error {
	if !d.done.CompareAndSwap(false, true) {
		return fmt.Errorf("pubsub: message %q: %w", d.Message.ID, ErrAlreadyAcked)
	}
	if d.lease.Revoked() {
		select {
		case <-d.sub.closing: // Close revokes too; closed is the better answer
			return fmt.Errorf("pubsub: ack on %q: subscription closed, the message will be redelivered: %w", d.sub.topic, ErrClosed)
		default:
		}
		return fmt.Errorf("pubsub: message %q: it will be delivered again: %w", d.Message.ID, ErrRevoked)
	}
	return d.sub.enqueue(d.ackID, nack, delay)
}

// Ack confirms the message was processed: it will not be redelivered. Acks
// are batched and sent in the background; a failed ack means redelivery,
// never loss. It returns ErrAlreadyAcked on a second Ack or Nack and
// ErrClosed when the subscription is closed (the message will be redelivered).
// It returns ErrRevoked when the broker took the message's partition away
// (a rebalance): the ack did not count and the message is delivered again.
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
