package activemq

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	amqp "github.com/Azure/go-amqp"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// publisher owns the publish connection, its session and one sender link per
// topic. A lost connection is dropped and redialed by the next publish.
// mu guards the fields and is held only briefly; what talks to the broker
// (dial, begin, attach) runs under setup, which a caller waits for only as
// long as its context lets it.
type publisher struct {
	b       *Broker
	setup   ctxLock // held while dialing or attaching
	mu      sync.Mutex
	conn    *amqp.Conn
	sess    *amqp.Session
	senders map[string]*amqp.Sender
	closed  bool
}

func newPublisher(b *Broker, conn *amqp.Conn) *publisher {
	return &publisher{b: b, setup: newCtxLock(), conn: conn, senders: map[string]*amqp.Sender{}}
}

// current returns the connection, session and topic's sender as they are
// (any of them nil while missing).
func (p *publisher) current(topic string) (*amqp.Conn, *amqp.Session, *amqp.Sender, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, nil, nil, fmt.Errorf("activemq: %w", driver.ErrClosed)
	}
	return p.conn, p.sess, p.senders[topic], nil
}

// link returns the publish connection, its session and the sender link of
// topic, dialing and attaching what is missing. It returns when ctx ends,
// also while another publish is dialing.
func (p *publisher) link(ctx context.Context, topic string) (*amqp.Conn, *amqp.Session, *amqp.Sender, error) {
	if conn, sess, s, err := p.current(topic); s != nil || err != nil {
		return conn, sess, s, err // every publish but the first to a topic
	}
	if err := p.setup.lock(ctx); err != nil {
		return nil, nil, nil, fmt.Errorf("activemq: wait for the publish link of topic %q: %w", topic, err)
	}
	defer p.setup.unlock()
	conn, sess, s, err := p.current(topic)
	if s != nil || err != nil {
		return conn, sess, s, err // attached by the publish we waited for
	}
	if conn == nil {
		if conn, err = p.b.dial(ctx, "publish"); err != nil {
			return nil, nil, nil, err
		}
		if err := p.adopt(nil, func() { p.conn = conn }); err != nil {
			_ = conn.Close()
			return nil, nil, nil, err
		}
		p.b.reconnects.Add(1)
		p.b.opts.Logger.Info("activemq: publish connection re-established", "broker", p.b.addr)
	}
	actx, cancel := context.WithTimeout(ctx, p.b.opts.ConnectionTimeout)
	defer cancel()
	if sess == nil {
		if sess, err = conn.NewSession(actx, nil); err != nil {
			return conn, nil, nil, fmt.Errorf("activemq: begin a session on %s: %w", p.b.addr, err)
		}
		if err := p.adopt(conn, func() { p.sess = sess }); err != nil {
			return conn, nil, nil, err
		}
	}
	if err := p.b.ensureGroups(actx, sess, topic); err != nil {
		return conn, sess, nil, err
	}
	target, caps := p.b.publishTarget(topic)
	if s, err = sess.NewSender(actx, target, &amqp.SenderOptions{TargetCapabilities: caps}); err != nil {
		return conn, sess, nil, fmt.Errorf("activemq: attach a sender to topic %q: %w", topic, err)
	}
	if err := p.adopt(conn, func() { p.senders[topic] = s }); err != nil {
		return conn, sess, nil, err
	}
	return conn, sess, s, nil
}

// adopt runs set under mu if want is still the publish connection (nil:
// none, for a new one); otherwise the connection was dropped or the broker
// closed meanwhile.
func (p *publisher) adopt(want *amqp.Conn, set func()) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return fmt.Errorf("activemq: %w", driver.ErrClosed)
	case p.conn != want:
		return fmt.Errorf("activemq: the publish connection to %s was lost meanwhile", p.b.addr)
	}
	set()
	return nil
}

// ctxLock is a mutex whose lock gives up when the caller's context ends:
// it guards work that waits on the network while every caller must still
// honour its own context.
type ctxLock chan struct{}

func newCtxLock() ctxLock { return make(ctxLock, 1) }

// lock takes l, or returns ctx's error if ctx ends first.
func (l ctxLock) lock(ctx context.Context) error {
	select {
	case l <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l ctxLock) unlock() { <-l }

// drop forgets conn (if it is still the current connection) after a failure
// on it, so that the next publish dials anew.
func (p *publisher) drop(conn *amqp.Conn, cause error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if conn == nil || p.conn != conn {
		return
	}
	p.b.opts.Logger.Warn("activemq: publish connection lost", "broker", p.b.addr, "err", cause)
	_ = conn.Close()
	p.conn, p.sess, p.senders = nil, nil, map[string]*amqp.Sender{}
}

func (p *publisher) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.conn != nil {
		_ = p.conn.Close()
		p.conn, p.sess, p.senders = nil, nil, nil
	}
}

// encode turns a driver message into a durable AMQP message.
func encode(m *driver.Message, now time.Time) *amqp.Message {
	am := &amqp.Message{
		Header:     &amqp.MessageHeader{Durable: true},
		Properties: &amqp.MessageProperties{MessageID: m.ID, CreationTime: &now},
		Data:       [][]byte{m.Payload},
	}
	if m.Key != "" {
		k := m.Key
		am.Properties.GroupID = &k
	}
	if len(m.Metadata) > 0 {
		am.ApplicationProperties = make(map[string]any, len(m.Metadata))
		for k, v := range m.Metadata {
			am.ApplicationProperties[k] = v
		}
	}
	return am
}

// permanent reports an error that sending again cannot fix: a broker's
// refusal of a link or of a message, or a failed topology check.
func permanent(err error) bool {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		switch ae.Condition {
		case amqp.ErrCondUnauthorizedAccess, amqp.ErrCondNotFound, amqp.ErrCondInvalidField, amqp.ErrCondNotAllowed,
			amqp.ErrCondNotImplemented, amqp.ErrCondMessageSizeExceeded, amqp.ErrCondDecodeError:
			return true
		}
	}
	return errors.Is(err, driver.ErrPermanent) || errors.Is(err, driver.ErrNotFound) ||
		errors.Is(err, driver.ErrClosed) || errors.Is(err, driver.ErrInvalid)
}

// SendBatch publishes msgs to topic and returns nil once the broker answered
// Accepted for every one of them (see Publishing in the package doc).
func (b *Broker) SendBatch(ctx context.Context, topic string, msgs []*driver.Message) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	if err := b.checkName("topic", topic); err != nil {
		return err
	}
	if max := b.opts.MaxMessageSize; max > 0 {
		for i, m := range msgs {
			if len(m.Payload) > max {
				return fmt.Errorf("activemq: message %d (%s): payload of %d bytes is over max_message_size %d: %w", i+1, m.ID, len(m.Payload), max, driver.ErrInvalid)
			}
		}
	}
	caller := ctx // publish_timeout bounds the attempts, the caller's ctx the call
	ctx, cancel := context.WithTimeout(ctx, b.opts.PublishTimeout)
	defer cancel()
	now := time.Now()
	pending := make([]*amqp.Message, len(msgs))
	for i, m := range msgs {
		pending[i] = encode(m, now)
	}
	var lastErr error
	for attempt := 0; ; attempt++ {
		broken := true // a failed link or topology check: dial anew
		conn, sess, snd, err := b.pub.link(ctx, topic)
		if err == nil {
			err = b.checkRoutable(ctx, sess, topic)
		}
		if err == nil {
			pending, broken, err = sendAll(ctx, snd, topic, pending)
			if err == nil && len(pending) == 0 {
				return nil
			}
		}
		if err != nil && permanent(err) {
			return err
		}
		if err != nil {
			lastErr = err
			if broken {
				b.pub.drop(conn, err)
			}
		}
		if caller.Err() != nil {
			return fmt.Errorf("activemq: publish to %q: message %v not confirmed: %w", topic, pending[0].Properties.MessageID, caller.Err())
		}
		if ctx.Err() != nil || b.closed.Load() {
			if lastErr == nil {
				lastErr = ctx.Err()
			}
			return fmt.Errorf("activemq: publish to %q: message %v not confirmed within publish_timeout %v: %w",
				topic, pending[0].Properties.MessageID, b.opts.PublishTimeout, lastErr)
		}
		if err := b.sleep(ctx, b.backoff(attempt)); err != nil && b.closed.Load() {
			return err
		}
	}
}

// sendAll writes every message to snd, then waits for each disposition. It
// returns the messages to send again (no answer, or Released/Modified) and
// the error that stopped it, or a permanent error for a Rejected message.
// broken says that the connection must be dropped: a send failed, or a
// wait ended for another reason than ctx. A send that fails because ctx
// ended while go-amqp handed its frame to the connection leaves the
// session's delivery ids out of step with the broker's (go-amqp v1.7.0:
// the broker then refuses every later transfer on the connection), so
// only a wait may be abandoned without losing the connection.
func sendAll(ctx context.Context, snd *amqp.Sender, topic string, msgs []*amqp.Message) (again []*amqp.Message, broken bool, linkErr error) {
	receipts := make([]amqp.SendReceipt, 0, len(msgs))
	for _, m := range msgs {
		r, err := snd.SendWithReceipt(ctx, m, nil)
		if err != nil {
			// Only a send that gave up waiting for link credit handed
			// nothing over.
			var ae *amqp.Error
			broken = !errors.As(err, &ae) || ae.Condition != amqp.ErrCondTransferLimitExceeded
			linkErr = fmt.Errorf("activemq: publish %v to %q: %w", m.Properties.MessageID, topic, err)
			break
		}
		receipts = append(receipts, r)
	}
	for i := range receipts {
		st, err := receipts[i].Wait(ctx)
		switch s := st.(type) {
		case *amqp.StateAccepted:
			continue
		case *amqp.StateRejected:
			return nil, false, fmt.Errorf("activemq: publish %v to %q: the broker rejected it: %v: %w", msgs[i].Properties.MessageID, topic, s.Error, driver.ErrPermanent)
		}
		if err != nil && linkErr == nil {
			linkErr = fmt.Errorf("activemq: publish %v to %q: %w", msgs[i].Properties.MessageID, topic, err)
		}
		if err != nil && ctx.Err() == nil {
			broken = true // the link or connection failed
		}
		again = append(again, msgs[i])
	}
	again = append(again, msgs[len(receipts):]...)
	if len(again) > 0 && linkErr == nil {
		linkErr = fmt.Errorf("activemq: publish %v to %q: the broker did not accept it", again[0].Properties.MessageID, topic)
	}
	return again, broken, linkErr
}
