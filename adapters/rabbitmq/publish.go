package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Header names the adapter writes.
const (
	headerKey     = "omnibus-key"
	headerAttempt = "omnibus-attempt"
)

// outMsg is one publishing with the name errors use for it.
type outMsg struct {
	exchange, key string
	mandatory     bool
	pub           amqp.Publishing
	id            string // message ID, for errors and to match returns
}

// pubPool is a pool of confirm-mode channels on the publish connection.
// A send checks one channel out for the whole batch, so the returns it sees
// are its own and the messages of a batch keep their order.
type pubPool struct {
	b     *Broker
	slots chan *pubChan
	done  chan struct{}
}

type pubChan struct {
	ch      *amqp.Channel
	gen     uint64
	returns chan amqp.Return
	closes  chan *amqp.Error
}

func newPubPool(b *Broker) *pubPool {
	p := &pubPool{b: b, slots: make(chan *pubChan, b.opts.PublishChannels), done: make(chan struct{})}
	for i := 0; i < b.opts.PublishChannels; i++ {
		p.slots <- nil // opened on first use
	}
	return p
}

func (p *pubPool) close() { close(p.done) }

// open makes pc usable on the current connection, replacing a closed channel.
func (p *pubPool) open(ctx context.Context, pc *pubChan) (*pubChan, error) {
	if pc != nil && !pc.ch.IsClosed() {
		return pc, nil
	}
	ch, gen, err := p.b.pub.channel(ctx)
	if err != nil {
		return pc, err
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return pc, fmt.Errorf("rabbitmq: put channel in confirm mode: %w", err)
	}
	w := p.b.opts.ConfirmWindow
	return &pubChan{
		ch: ch, gen: gen,
		// At most one return per message in flight, and the window bounds
		// those: the library never has to block (or give up) handing us one.
		returns: ch.NotifyReturn(make(chan amqp.Return, 2*w+16)),
		closes:  ch.NotifyClose(make(chan *amqp.Error, 1)),
	}, nil
}

// errUnroutable marks a message the broker returned because no queue was
// bound to its exchange.
var errUnroutable = errors.New("no queue is bound to the exchange")

// send publishes msgs in order and returns once every one is confirmed. It
// publishes again the messages whose channel or connection failed before
// they were confirmed, until deadline. prepare (may be nil) runs before each
// round, to declare what the messages are routed to (again after a
// reconnect). The error names the first message that failed.
func (p *pubPool) send(ctx context.Context, msgs []outMsg, deadline time.Time, prepare func(context.Context) error) error {
	if len(msgs) == 0 {
		return nil
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	pending := make([]int, len(msgs))
	for i := range pending {
		pending[i] = i
	}
	var lastErr error
	backoff := 50 * time.Millisecond
	for round := 0; ; round++ {
		if round > 0 {
			// Something failed: wait a little (the connection is
			// probably being re-established) before publishing again.
			t := time.NewTimer(backoff/2 + time.Duration(rand.Int64N(int64(backoff))))
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			backoff = min(2*backoff, time.Second)
		}
		if ctx.Err() != nil {
			m := msgs[pending[0]]
			if lastErr == nil {
				lastErr = ctx.Err()
			}
			return fmt.Errorf("rabbitmq: message %q (and %d more) not confirmed by the broker before the publish timeout: %w", m.id, len(pending)-1, lastErr)
		}
		if prepare != nil {
			if err := prepare(ctx); err != nil {
				if errors.Is(err, driver.ErrClosed) || errors.Is(err, driver.ErrInvalid) {
					return err
				}
				lastErr = err
				continue
			}
		}
		var pc *pubChan
		select {
		case pc = <-p.slots:
		case <-p.done:
			return fmt.Errorf("rabbitmq: publish: %w", driver.ErrClosed)
		case <-ctx.Done():
			continue
		}
		pc, err := p.open(ctx, pc)
		if err != nil {
			p.slots <- pc
			if errors.Is(err, driver.ErrClosed) {
				return fmt.Errorf("rabbitmq: publish: %w", err)
			}
			lastErr = err
			continue
		}
		failed, perm, err := pc.publish(ctx, msgs, pending, p.b.opts.ConfirmWindow)
		p.slots <- pc
		if perm != nil {
			return perm
		}
		if len(failed) == 0 {
			return nil
		}
		lastErr = err
		pending = failed
	}
}

// publish sends msgs[idx...] on pc with at most window unconfirmed and waits
// for every confirm. It returns the indexes not confirmed (to publish again)
// with the reason, or a permanent error (a returned message).
func (pc *pubChan) publish(ctx context.Context, msgs []outMsg, idx []int, window int) (failed []int, perm, err error) {
	dcs := make([]*amqp.DeferredConfirmation, len(idx))
	returned := map[string]int{}
	drain := func() {
		for {
			select {
			case r, ok := <-pc.returns:
				if !ok { // the channel closed
					pc.returns = nil
					return
				}
				returned[r.MessageId]++
			default:
				return
			}
		}
	}
	// wait blocks until dc is resolved. If ctx ends first (the publish
	// timeout), it closes the channel, which resolves every pending
	// confirmation as not acked.
	wait := func(dc *amqp.DeferredConfirmation) {
		select {
		case <-dc.Done():
		case <-ctx.Done():
			_ = pc.ch.Close()
			<-dc.Done()
		}
	}
	oldest := 0
	sent := 0
	var pubErr error
	for i, mi := range idx {
		for i-oldest >= window {
			drain()
			wait(dcs[oldest])
			oldest++
		}
		m := &msgs[mi]
		dc, e := pc.ch.PublishWithDeferredConfirmWithContext(ctx, m.exchange, m.key, m.mandatory, false, m.pub)
		if e != nil {
			pubErr = e
			break
		}
		dcs[i] = dc
		sent++
	}
	for ; oldest < sent; oldest++ {
		drain()
		wait(dcs[oldest])
	}
	drain()
	var nacked bool
	for i, mi := range idx {
		if i >= sent {
			failed = append(failed, mi)
			continue
		}
		if !dcs[i].Acked() {
			failed = append(failed, mi)
			nacked = true
			continue
		}
		if returned[msgs[mi].id] > 0 {
			returned[msgs[mi].id]--
			perm = fmt.Errorf("rabbitmq: message %q returned by the broker: %w (exchange %q); subscribe a group or list it in ?groups= first, or publish with unroutable=drop: %w",
				msgs[mi].id, errUnroutable, msgs[mi].exchange, driver.ErrNotFound)
			return nil, perm, nil
		}
	}
	switch {
	case len(failed) == 0:
		return nil, nil, nil
	case pc.ch.IsClosed():
		cause := error(amqp.ErrClosed)
		select {
		case e := <-pc.closes:
			if e != nil {
				cause = e
			}
		default:
		}
		return failed, nil, fmt.Errorf("channel closed before the broker confirmed: %w", cause)
	case pubErr != nil:
		return failed, nil, pubErr
	case nacked:
		return failed, nil, errors.New("the broker nacked the message (not stored)")
	}
	return failed, nil, errors.New("not confirmed")
}

// SendBatch publishes msgs to topic's exchange with confirms; see the
// package documentation for the retry and unroutable rules.
func (b *Broker) SendBatch(ctx context.Context, topic string, msgs []*driver.Message) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	deadline := time.Now().Add(b.opts.PublishTimeout)
	if err := validTopic(topic); err != nil {
		return err
	}
	now := time.Now()
	out := make([]outMsg, len(msgs))
	for i, m := range msgs {
		h := amqp.Table{}
		for k, v := range m.Metadata {
			h[k] = v
		}
		if m.Key != "" {
			h[headerKey] = m.Key
		}
		out[i] = outMsg{
			exchange:  topic,
			key:       m.Key,
			mandatory: !b.opts.DropUnroutable,
			id:        m.ID,
			pub: amqp.Publishing{
				Headers:      h,
				DeliveryMode: amqp.Persistent,
				MessageId:    m.ID,
				Timestamp:    now,
				Body:         m.Payload,
			},
		}
	}
	rounds := 0
	prepare := func(ctx context.Context) error {
		if rounds++; rounds > 1 {
			// A round failed; if the channel died of a 404 the exchange was
			// deleted behind our back: declare it again.
			b.topo.forget(topic)
		}
		return b.topo.ensureTopic(ctx, topic)
	}
	if err := b.pool.send(ctx, out, deadline, prepare); err != nil {
		if errors.Is(err, driver.ErrClosed) {
			return err
		}
		return fmt.Errorf("rabbitmq: publish to %q: %w", topic, err)
	}
	return nil
}
