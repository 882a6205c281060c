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
type publisher struct {
	b       *Broker
	mu      sync.Mutex
	conn    *amqp.Conn
	sess    *amqp.Session
	senders map[string]*amqp.Sender
	closed  bool
}

func newPublisher(b *Broker, conn *amqp.Conn) *publisher {
	return &publisher{b: b, conn: conn, senders: map[string]*amqp.Sender{}}
}

// link returns the publish connection, its session and the sender link of
// topic, dialing and attaching what is missing.
func (p *publisher) link(ctx context.Context, topic string) (*amqp.Conn, *amqp.Session, *amqp.Sender, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, nil, nil, fmt.Errorf("activemq: %w", driver.ErrClosed)
	}
	if p.conn == nil {
		conn, err := p.b.dial(ctx, "publish")
		if err != nil {
			return nil, nil, nil, err
		}
		p.conn = conn
		p.b.reconnects.Add(1)
		p.b.opts.Logger.Info("activemq: publish connection re-established", "broker", p.b.addr)
	}
	actx, cancel := context.WithTimeout(ctx, p.b.opts.ConnectionTimeout)
	defer cancel()
	if p.sess == nil {
		sess, err := p.conn.NewSession(actx, nil)
		if err != nil {
			return p.conn, nil, nil, fmt.Errorf("activemq: begin a session on %s: %w", p.b.addr, err)
		}
		p.sess = sess
	}
	if s := p.senders[topic]; s != nil {
		return p.conn, p.sess, s, nil
	}
	if err := p.b.ensureGroups(actx, p.sess, topic); err != nil {
		return p.conn, p.sess, nil, err
	}
	target, caps := p.b.publishTarget(topic)
	s, err := p.sess.NewSender(actx, target, &amqp.SenderOptions{TargetCapabilities: caps})
	if err != nil {
		return p.conn, p.sess, nil, fmt.Errorf("activemq: attach a sender to topic %q: %w", topic, err)
	}
	p.senders[topic] = s
	return p.conn, p.sess, s, nil
}

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
	ctx, cancel := context.WithTimeout(ctx, b.opts.PublishTimeout)
	defer cancel()
	now := time.Now()
	pending := make([]*amqp.Message, len(msgs))
	for i, m := range msgs {
		pending[i] = encode(m, now)
	}
	var lastErr error
	for attempt := 0; ; attempt++ {
		conn, sess, snd, err := b.pub.link(ctx, topic)
		if err == nil {
			err = b.checkRoutable(ctx, sess, topic)
		}
		if err == nil {
			pending, err = sendAll(ctx, snd, topic, pending)
			if err == nil && len(pending) == 0 {
				return nil
			}
		}
		if err != nil && permanent(err) {
			return err
		}
		if err != nil {
			lastErr = err
			b.pub.drop(conn, err)
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
// the error that cut the link, or a permanent error for a Rejected message.
func sendAll(ctx context.Context, snd *amqp.Sender, topic string, msgs []*amqp.Message) ([]*amqp.Message, error) {
	receipts := make([]amqp.SendReceipt, 0, len(msgs))
	var linkErr error
	for _, m := range msgs {
		r, err := snd.SendWithReceipt(ctx, m, nil)
		if err != nil {
			linkErr = fmt.Errorf("activemq: publish %v to %q: %w", m.Properties.MessageID, topic, err)
			break
		}
		receipts = append(receipts, r)
	}
	var again []*amqp.Message
	for i := range receipts {
		st, err := receipts[i].Wait(ctx)
		switch s := st.(type) {
		case *amqp.StateAccepted:
			continue
		case *amqp.StateRejected:
			return nil, fmt.Errorf("activemq: publish %v to %q: the broker rejected it: %v: %w", msgs[i].Properties.MessageID, topic, s.Error, driver.ErrPermanent)
		}
		if err != nil && linkErr == nil {
			linkErr = fmt.Errorf("activemq: publish %v to %q: %w", msgs[i].Properties.MessageID, topic, err)
		}
		again = append(again, msgs[i])
	}
	again = append(again, msgs[len(receipts):]...)
	if len(again) > 0 && linkErr == nil {
		linkErr = fmt.Errorf("activemq: publish %v to %q: the broker did not accept it", again[0].Properties.MessageID, topic)
	}
	return again, linkErr
}
