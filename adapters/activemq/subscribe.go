package activemq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/Azure/go-amqp"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// attemptAnnotation carries, on a delayed copy of a nacked message, how many
// deliveries the message had before the copy was made.
const attemptAnnotation = "x-opt-omnibus-attempt"

// deliveryDelayAnnotation asks Artemis (and Classic) to deliver a message no
// sooner than this many milliseconds after it was sent.
const deliveryDelayAnnotation = "x-opt-delivery-delay"

// link is one connection of a subscription with its receiver, and the sender
// of delayed copies to the group's queue (created on the first Nack(d)).
type link struct {
	conn  *amqp.Conn
	sess  *amqp.Session
	recv  *amqp.Receiver
	mu    sync.Mutex
	delay *amqp.Sender
}

// subscription receives one (topic, group) on a connection of its own.
type subscription struct {
	b      *Broker
	topic  string
	group  string
	source string
	caps   []string // capabilities of source
	credit int

	mu       sync.Mutex
	cur      *link
	failures int

	closed  atomic.Bool
	closing chan struct{}
	timers  sync.WaitGroup // in-process delayed nacks of anonymous subscriptions
}

// delivery is the AckID of one received message.
type delivery struct {
	l       *link
	msg     *amqp.Message
	attempt int
}

// OpenSubscription attaches a receiver for (topic, opts.Group): the group's
// durable queue, created by the broker on first use, or a private queue for
// an anonymous subscription. It returns once the broker confirmed the attach.
func (b *Broker) OpenSubscription(ctx context.Context, topic string, opts driver.SubscriptionOptions) (driver.Subscription, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	if opts.Group != "" && strings.Contains(opts.Group, ":") {
		return nil, fmt.Errorf("activemq: group %q: ':' is reserved for fully qualified queue names: %w", opts.Group, driver.ErrInvalid)
	}
	if err := b.checkName("topic", topic); err != nil {
		return nil, err
	}
	if opts.Group != "" {
		if err := b.checkName("group", opts.Group); err != nil {
			return nil, err
		}
	}
	credit := b.opts.Prefetch
	if credit == 0 {
		credit = max(opts.MaxBatch, 1)
	}
	s := &subscription{b: b, topic: topic, group: opts.Group, credit: credit, closing: make(chan struct{})}
	s.source, s.caps = b.groupSource(topic, opts.Group)
	l, err := s.connect(ctx)
	if err != nil {
		return nil, err
	}
	s.cur = l
	if opts.Group != "" {
		b.routed.Store(topic, struct{}{})
	}
	return s, nil
}

// connect dials a connection and attaches the receiver.
func (s *subscription) connect(ctx context.Context) (*link, error) {
	conn, err := s.b.dial(ctx, "consume")
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithTimeout(ctx, s.b.opts.ConnectionTimeout)
	defer cancel()
	fail := func(err error) (*link, error) {
		_ = conn.Close()
		return nil, err
	}
	sess, err := conn.NewSession(actx, nil)
	if err != nil {
		return fail(fmt.Errorf("activemq: begin a session on %s: %w", s.b.addr, err))
	}
	if err := s.b.ensureGroups(actx, sess, s.topic); err != nil {
		return fail(err)
	}
	recv, err := sess.NewReceiver(actx, s.source, &amqp.ReceiverOptions{
		Credit:             int32(s.credit),
		SourceCapabilities: s.caps,
	})
	if err != nil {
		return fail(fmt.Errorf("activemq: attach a receiver to %s: %w", s.source, err))
	}
	return &link{conn: conn, sess: sess, recv: recv}, nil
}

// current returns the live link, reconnecting (with backoff) when the last
// one was lost.
func (s *subscription) current(ctx context.Context) (*link, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return nil, fmt.Errorf("activemq: subscription to %q: %w", s.topic, driver.ErrClosed)
	}
	if s.cur != nil {
		return s.cur, nil
	}
	if s.failures > 0 {
		if err := s.b.sleep(ctx, s.b.backoff(s.failures-1)); err != nil {
			return nil, err
		}
	}
	l, err := s.connect(ctx)
	if err != nil {
		s.failures++
		return nil, err
	}
	s.failures = 0
	s.cur = l
	s.b.reconnects.Add(1)
	s.b.opts.Logger.Info("activemq: subscription re-attached", "broker", s.b.addr, "source", s.source)
	return l, nil
}

// lost drops l after a failure, so that the next receive reconnects.
func (s *subscription) lost(l *link, cause error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur != l {
		return
	}
	s.b.opts.Logger.Warn("activemq: subscription connection lost", "broker", s.b.addr, "source", s.source, "err", cause)
	s.cur = nil
	s.failures++
	_ = l.conn.Close()
}

// ReceiveBatch blocks for one message, then takes what else the link holds,
// up to max.
func (s *subscription) ReceiveBatch(ctx context.Context, max int) ([]*driver.Message, error) {
	l, err := s.current(ctx)
	if err != nil {
		if errors.Is(err, driver.ErrClosed) || errors.Is(err, driver.ErrInvalid) || errors.Is(err, driver.ErrPermanent) || ctx.Err() != nil {
			return nil, err
		}
		return nil, driver.Transient(fmt.Errorf("activemq: resume receiving from %s: %w", s.source, err))
	}
	m, err := l.recv.Receive(ctx, nil)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if s.closed.Load() {
			return nil, fmt.Errorf("activemq: subscription to %q: %w", s.topic, driver.ErrClosed)
		}
		s.lost(l, err)
		return nil, driver.Transient(fmt.Errorf("activemq: receive from %s: %w", s.source, err))
	}
	out := []*driver.Message{s.decode(l, m)}
	for len(out) < max {
		m := l.recv.Prefetched()
		if m == nil {
			break
		}
		out = append(out, s.decode(l, m))
	}
	return out, nil
}

func (s *subscription) decode(l *link, m *amqp.Message) *driver.Message {
	d := &driver.Message{Topic: s.topic, Attempt: 1}
	if p := m.Properties; p != nil {
		d.ID = idString(p.MessageID)
		if p.GroupID != nil {
			d.Key = *p.GroupID
		}
		if p.CreationTime != nil {
			d.PublishedAt = *p.CreationTime
		}
	}
	if m.Header != nil {
		d.Attempt += int(m.Header.DeliveryCount)
	}
	if n, ok := annotationInt(m.Annotations[attemptAnnotation]); ok {
		d.Attempt += n
	}
	for k, v := range m.ApplicationProperties {
		sv, ok := v.(string)
		if !ok {
			continue // the broker's own properties are never strings set by omnibus
		}
		if d.Metadata == nil {
			d.Metadata = make(map[string]string, len(m.ApplicationProperties))
		}
		d.Metadata[k] = sv
	}
	for _, b := range m.Data {
		d.Payload = append(d.Payload, b...)
	}
	if d.Payload == nil {
		d.Payload = []byte{}
	}
	d.AckID = &delivery{l: l, msg: m, attempt: d.Attempt}
	return d
}

func idString(v any) string {
	switch id := v.(type) {
	case nil:
		return ""
	case string:
		return id
	case []byte:
		return string(id)
	case uint64:
		return strconv.FormatUint(id, 10)
	}
	return fmt.Sprint(v)
}

func annotationInt(v any) (int, bool) {
	switch n := v.(type) {
	case int64:
		return int(n), true
	case int32:
		return int(n), true
	case int:
		return n, true
	case uint32:
		return int(n), true
	case uint64:
		return int(n), true
	}
	return 0, false
}

// SendAcks settles each delivery as Accepted.
func (s *subscription) SendAcks(ctx context.Context, ids []driver.AckID) error {
	var first error
	for _, id := range ids {
		d := id.(*delivery)
		if err := d.l.recv.AcceptMessage(ctx, d.msg); err != nil && first == nil {
			first = fmt.Errorf("activemq: ack %s on %s: %w", idString(d.msg.Properties.MessageID), s.source, err)
		}
	}
	return first
}

// SendNacks gives deliveries back (see Subscribing in the package doc).
func (s *subscription) SendNacks(ctx context.Context, ids []driver.AckID, delay time.Duration) error {
	var first error
	for _, id := range ids {
		if err := s.nack(ctx, id.(*delivery), delay); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (s *subscription) nack(ctx context.Context, d *delivery, delay time.Duration) error {
	id := idString(d.msg.Properties.MessageID)
	switch {
	case s.b.opts.MaxAttempts > 0 && d.attempt >= s.b.opts.MaxAttempts:
		err := d.l.recv.RejectMessage(ctx, d.msg, &amqp.Error{
			Condition:   "omnibus:max-attempts",
			Description: fmt.Sprintf("nacked on attempt %d (max_attempts=%d)", d.attempt, s.b.opts.MaxAttempts),
		})
		if err != nil {
			return fmt.Errorf("activemq: dead-letter %s on %s: %w", id, s.source, err)
		}
		return nil
	case delay <= 0:
		return s.modify(ctx, d)
	case s.group == "":
		// No queue name to send a delayed copy to: wait in process.
		s.timers.Add(1)
		go func() {
			defer s.timers.Done()
			t := time.NewTimer(delay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-s.closing:
				return // the closing link gives the message back
			}
			mctx, cancel := context.WithTimeout(context.Background(), s.b.opts.ConnectionTimeout)
			defer cancel()
			if err := s.modify(mctx, d); err != nil {
				s.b.opts.Logger.Warn("activemq: delayed nack failed; the broker redelivers the message when the link closes", "source", s.source, "id", id, "err", err)
			}
		}()
		return nil
	}
	if err := s.sendDelayed(ctx, d, delay); err != nil {
		s.b.opts.Logger.Warn("activemq: delayed nack could not re-send the message; redelivering it now instead", "source", s.source, "id", id, "err", err)
		return s.modify(ctx, d)
	}
	if err := d.l.recv.AcceptMessage(ctx, d.msg); err != nil {
		return fmt.Errorf("activemq: nack %s on %s: settle the original after its delayed copy: %w", id, s.source, err)
	}
	return nil
}

func (s *subscription) modify(ctx context.Context, d *delivery) error {
	if err := d.l.recv.ModifyMessage(ctx, d.msg, &amqp.ModifyMessageOptions{DeliveryFailed: true}); err != nil {
		return fmt.Errorf("activemq: nack %s on %s: %w", idString(d.msg.Properties.MessageID), s.source, err)
	}
	return nil
}

// sendDelayed sends a copy of d's message to the group's queue, to be
// delivered after delay, and waits for Accepted.
func (s *subscription) sendDelayed(ctx context.Context, d *delivery, delay time.Duration) error {
	l := d.l
	ctx, cancel := context.WithTimeout(ctx, s.b.opts.ConnectionTimeout)
	defer cancel()
	l.mu.Lock()
	if l.delay == nil {
		snd, err := l.sess.NewSender(ctx, s.source, &amqp.SenderOptions{TargetCapabilities: s.caps})
		if err != nil {
			l.mu.Unlock()
			return fmt.Errorf("attach a sender to %s: %w", s.source, err)
		}
		l.delay = snd
	}
	snd := l.delay
	l.mu.Unlock()
	src := d.msg
	cp := &amqp.Message{
		Header:                &amqp.MessageHeader{Durable: true},
		Properties:            src.Properties,
		ApplicationProperties: src.ApplicationProperties,
		Data:                  src.Data,
		Annotations: amqp.Annotations{
			attemptAnnotation:       int64(d.attempt),
			deliveryDelayAnnotation: delay.Milliseconds() + boolInt(delay%time.Millisecond != 0),
		},
	}
	if err := snd.Send(ctx, cp, nil); err != nil {
		return err
	}
	return nil
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// Close detaches the receiver and closes the connection: the broker gives
// every unsettled delivery back to the queue.
func (s *subscription) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.closing)
	s.timers.Wait()
	s.mu.Lock()
	l := s.cur
	s.cur = nil
	s.mu.Unlock()
	if l == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.b.opts.ConnectionTimeout)
	defer cancel()
	_ = l.recv.Close(ctx)
	return l.conn.Close()
}
