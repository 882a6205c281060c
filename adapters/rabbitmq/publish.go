package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/omnibusmq/omnibus/internal/backoff"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Header names the adapter writes.
const (
	headerKey     = "omnibus-key"
	headerAttempt = "omnibus-attempt"
)

// batch is what one send publishes, in order: either msgs (SendBatch: every
// message to one exchange) or out (republished deliveries, see nack).
//
// The amqp.Publishing of a message of msgs is built on the channel that
// sends it, just before it is sent, with that channel's header table:
// amqp091-go serialises a publishing during the call and keeps nothing of
// it, so a batch costs no table per message. The metadata of every message
// is copied once, when the batch is made (meta), because a caller whose
// context ended may have returned from Publish and be changing its map while
// its messages are still sent with others' (or sent again after a
// reconnect); the strings themselves are immutable and shared.
type batch struct {
	exchange  string
	mandatory bool
	now       time.Time
	msgs      []*driver.Message
	meta      []string // key, value pairs of every message's metadata, in order
	metaEnd   []int    // msgs[i]'s pairs are meta[metaEnd[i-1]:metaEnd[i]]

	out []outMsg
}

func newBatch(exchange string, mandatory bool, msgs []*driver.Message) *batch {
	bt := &batch{exchange: exchange, mandatory: mandatory, now: time.Now(), msgs: msgs}
	n := 0
	for _, m := range msgs {
		n += len(m.Metadata)
	}
	if n > 0 {
		bt.meta = make([]string, 0, 2*n)
		bt.metaEnd = make([]int, len(msgs))
		for i, m := range msgs {
			for k, v := range m.Metadata {
				bt.meta = append(bt.meta, k, v)
			}
			bt.metaEnd[i] = len(bt.meta)
		}
	}
	return bt
}

// metadata returns the key, value pairs of msgs[i].
func (bt *batch) metadata(i int) []string {
	if bt.metaEnd == nil {
		return nil
	}
	from := 0
	if i > 0 {
		from = bt.metaEnd[i-1]
	}
	return bt.meta[from:bt.metaEnd[i]]
}

func (bt *batch) len() int {
	if bt.out != nil {
		return len(bt.out)
	}
	return len(bt.msgs)
}

// id names message i in errors (and matches it to returns).
func (bt *batch) id(i int) string {
	if bt.out != nil {
		return bt.out[i].id
	}
	return bt.msgs[i].ID
}

// outMsg is one prepared publishing with the name errors use for it.
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

	// Reused by every batch sent on the channel (one at a time).
	headers  amqp.Table
	dcs      []*amqp.DeferredConfirmation
	returned map[string]int
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
		headers: amqp.Table{},
	}, nil
}

// errUnroutable marks a message the broker returned because no queue was
// bound to its exchange.
var errUnroutable = errors.New("no queue is bound to the exchange")

// send publishes the batch in order and returns once every message is
// confirmed. It publishes again the messages whose channel or connection
// failed before they were confirmed, until deadline. prepare (may be nil)
// runs before each round, to declare what the messages are routed to (again
// after a reconnect). The error names the first message that failed.
func (p *pubPool) send(ctx context.Context, bt *batch, deadline time.Time, prepare func(context.Context) error) error {
	if bt.len() == 0 {
		return nil
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var pending []int // nil: every message; after a failed round, those to publish again
	var lastErr error
	retry := backoff.Policy{Initial: 50 * time.Millisecond, Max: time.Second}
	for round := 0; ; round++ {
		if round > 0 {
			// Something failed: wait a little (the connection is
			// probably being re-established) before publishing again.
			retry.Sleep(ctx, round) // ctx is checked below
		}
		if ctx.Err() != nil {
			first, n := 0, bt.len()
			if pending != nil {
				first, n = pending[0], len(pending)
			}
			if lastErr == nil {
				lastErr = ctx.Err()
			}
			return fmt.Errorf("rabbitmq: message %q (and %d more) not confirmed by the broker before the publish timeout: %w", bt.id(first), n-1, lastErr)
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
		failed, perm, err := pc.publish(ctx, bt, pending, p.b.opts.ConfirmWindow)
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

// publishing returns the AMQP publishing of bt.msgs[i], with pc's header
// table (valid until the next call).
func (pc *pubChan) publishing(bt *batch, i int) amqp.Publishing {
	m := bt.msgs[i]
	h := pc.headers
	clear(h)
	kv := bt.metadata(i)
	for j := 0; j+1 < len(kv); j += 2 {
		if ownHeader(kv[j]) {
			continue // the adapter's own (see CheckMessage)
		}
		h[kv[j]] = kv[j+1]
	}
	if m.Key != "" {
		h[headerKey] = m.Key
	}
	return amqp.Publishing{
		Headers:      h,
		DeliveryMode: amqp.Persistent,
		MessageId:    m.ID,
		Timestamp:    bt.now,
		Body:         m.Payload,
	}
}

// publish sends the messages of bt at the indexes idx (nil: all of them) on
// pc, with at most window unconfirmed, and waits for every confirm. It
// returns the indexes not confirmed (to publish again) with the reason, or a
// permanent error (a returned message).
func (pc *pubChan) publish(ctx context.Context, bt *batch, idx []int, window int) (failed []int, perm, err error) {
	n := bt.len()
	if idx != nil {
		n = len(idx)
	}
	at := func(i int) int {
		if idx == nil {
			return i
		}
		return idx[i]
	}
	if cap(pc.dcs) < n {
		pc.dcs = make([]*amqp.DeferredConfirmation, n)
	}
	dcs := pc.dcs[:n]
	defer clear(dcs) // let the confirmations go
	clear(pc.returned)
	drain := func() {
		for {
			select {
			case r, ok := <-pc.returns:
				if !ok { // the channel closed
					pc.returns = nil
					return
				}
				if pc.returned == nil {
					pc.returned = map[string]int{}
				}
				pc.returned[r.MessageId]++
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
	for i := 0; i < n; i++ {
		if i-oldest >= window {
			// Returns come before their confirms: take them so that
			// the library never blocks handing us one.
			drain()
			for i-oldest >= window {
				wait(dcs[oldest])
				oldest++
			}
		}
		var dc *amqp.DeferredConfirmation
		var e error
		if bt.out != nil {
			o := &bt.out[at(i)]
			dc, e = pc.ch.PublishWithDeferredConfirmWithContext(ctx, o.exchange, o.key, o.mandatory, false, o.pub)
		} else {
			mi := at(i)
			dc, e = pc.ch.PublishWithDeferredConfirmWithContext(ctx, bt.exchange, bt.msgs[mi].Key, bt.mandatory, false, pc.publishing(bt, mi))
		}
		if e != nil {
			pubErr = e
			break
		}
		dcs[i] = dc
		sent++
	}
	// The broker confirms (mostly in order, with multiple=true) as it
	// stores: waiting for the last one first wakes this goroutine about
	// once, not once per confirm frame.
	if sent > oldest {
		wait(dcs[sent-1])
	}
	for ; oldest < sent; oldest++ {
		wait(dcs[oldest])
	}
	drain()
	var nacked bool
	for i := 0; i < n; i++ {
		mi := at(i)
		if i >= sent {
			failed = append(failed, mi)
			continue
		}
		if !dcs[i].Acked() {
			failed = append(failed, mi)
			nacked = true
			continue
		}
		if id := bt.id(mi); pc.returned[id] > 0 {
			pc.returned[id]--
			exchange := bt.exchange
			if bt.out != nil {
				exchange = bt.out[mi].exchange
			}
			perm = fmt.Errorf("rabbitmq: message %q returned by the broker: %w (exchange %q); subscribe a group or list it in ?groups= first, or publish with unroutable=drop: %w",
				id, errUnroutable, exchange, driver.ErrNotFound)
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
	for _, m := range msgs {
		if err := b.CheckMessage(m); err != nil {
			return err
		}
	}
	bt := newBatch(topic, !b.opts.DropUnroutable, msgs)
	rounds := 0
	prepare := func(ctx context.Context) error {
		if rounds++; rounds > 1 {
			// A round failed; if the channel died of a 404 the exchange was
			// deleted behind our back: declare it again.
			b.topo.forget(topic)
		}
		return b.topo.ensureTopic(ctx, topic)
	}
	if err := b.pool.send(ctx, bt, deadline, prepare); err != nil {
		if errors.Is(err, driver.ErrClosed) {
			return err
		}
		return fmt.Errorf("rabbitmq: publish to %q: %w", topic, err)
	}
	return nil
}

// maxShortStr is the longest AMQP short string: a header name, the
// message-id property, a routing key.
const maxShortStr = 255

// ownHeader reports a header the adapter writes itself (the key, and the
// attempt count of its own redeliveries): a caller's metadata under these
// names is not sent, so that only the adapter's redelivery sets Attempt.
func ownHeader(k string) bool { return k == headerKey || k == headerAttempt }

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) <= 40 {
		return s
	}
	return s[:40] + "..."
}

// CheckMessage is the adapter's driver.Traits.CheckMessage: it rejects, before
// anything is sent, a message whose header fields AMQP 0-9-1 or the broker
// cannot carry (the broker would close the whole connection on it): an ID,
// Key or metadata key over 255 bytes, metadata named like a header the
// broker sets (x-delivery-count, x-death, x-first-death-*, x-last-death-*),
// and properties (metadata, key, ID) that do not fit one frame of the
// negotiated frame_max.
func (b *Broker) CheckMessage(m *driver.Message) error {
	if len(m.ID) > maxShortStr {
		return fmt.Errorf("rabbitmq: message ID %q is %d bytes, over AMQP's limit of %d bytes for the message-id property: %w",
			clip(m.ID), len(m.ID), maxShortStr, driver.ErrInvalid)
	}
	if len(m.Key) > maxShortStr {
		return fmt.Errorf("rabbitmq: message %q: Key %q is %d bytes, over AMQP's limit of %d bytes for a routing key: %w",
			clip(m.ID), clip(m.Key), len(m.Key), maxShortStr, driver.ErrInvalid)
	}
	// The content header frame: class, weight, body size, property flags,
	// delivery mode, timestamp, message-id, the header table (4 bytes of
	// length, then per string entry: name length, name, type, value
	// length, value), within frame_max less the frame's 8 bytes.
	size := 2 + 2 + 8 + 2 + 1 + 8 + 1 + len(m.ID) + 4
	if m.Key != "" {
		size += 1 + len(headerKey) + 1 + 4 + len(m.Key)
	}
	for k, v := range m.Metadata {
		if len(k) > maxShortStr {
			return fmt.Errorf("rabbitmq: message %q: metadata key %q is %d bytes, over AMQP's limit of %d bytes for a header name: %w",
				clip(m.ID), clip(k), len(k), maxShortStr, driver.ErrInvalid)
		}
		if brokerHeader(k) {
			return fmt.Errorf("rabbitmq: message %q: metadata key %q is reserved by RabbitMQ (it sets it on redelivery and dead-lettering): %w",
				clip(m.ID), k, driver.ErrInvalid)
		}
		if !ownHeader(k) {
			size += 1 + len(k) + 1 + 4 + len(v)
		}
	}
	if b.frameMax > 0 && size > b.frameMax-8 {
		return fmt.Errorf("rabbitmq: message %q: metadata, key and ID take %d bytes of the AMQP content header, over the %d bytes that fit one frame of the negotiated frame_max of %d bytes: %w",
			clip(m.ID), size, b.frameMax-8, b.frameMax, driver.ErrInvalid)
	}
	return nil
}
