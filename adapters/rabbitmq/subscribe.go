package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	quorum       bool // the queue counts redeliveries in x-delivery-count
	qos          int

	mu     sync.Mutex
	cur    *consumer
	closed bool
}

// consumer is one channel consuming the subscription's queue. Delivery tags
// are per channel, so acks for a consumer whose channel died are void (the
// broker redelivers those messages).
//
// Acks are recorded by SendAcks (on the caller's goroutine, no network) and
// sent by the consumer's flusher goroutine: a run of acked tags starting at
// the lowest unsettled one goes out as one basic.ack multiple=true, an ack
// above a gap as a basic.ack of its own. The flusher sends as soon as
// "every" acks (a quarter of the prefetch) are pending, and otherwise at most
// ackDelay after the first pending ack: an ack never waits behind a slow
// delivery, and the broker gets its prefetch credit back in time. This is
// the "ack every N with multiple" loop a careful raw client writes, without
// ever covering an unsettled tag.
type consumer struct {
	ch         acker
	log        *slog.Logger // nil in unit tests
	sac        bool         // the queues have a single active consumer (partitions)
	tags       []string     // consumer tags, one per queue consumed
	queues     []string     // queues[i] is consumed with tags[i]
	deliveries <-chan amqp.Delivery
	every      int // send pending acks once this many are recorded

	// sendMu serialises settle frames from snapshot to send, so that a
	// requeue (sent at once) and a coalesced ack never pass each other.
	sendMu sync.Mutex

	mu      sync.Mutex
	base    uint64          // every delivery tag below base is settled
	done    map[uint64]bool // tags >= base already settled: true while the ack is not yet sent
	multi   uint64          // acked tag below base to send with multiple=true (0: none)
	singles []uint64        // acked tags above a gap, not yet sent (may be covered by multi since)
	unsent  int             // acks recorded and not yet sent
	armed   bool            // the flusher was told about the pending acks

	kick    chan struct{} // send now
	arm     chan struct{} // send within ackDelay
	quit    chan struct{} // closed by stop
	stopped chan struct{} // closed when the flusher has sent its last frames
	once    sync.Once
}

// ackDelay bounds how long a recorded ack waits for others to share its
// frame (a slow stream pays this once per ack, well below any redelivery
// timeout; Close and a nack send the pending acks at once).
const ackDelay = time.Millisecond

func newConsumer(ch acker, dl <-chan amqp.Delivery, qos int) *consumer {
	return &consumer{
		ch: ch, deliveries: dl, every: max(1, qos/4), base: 1, done: map[uint64]bool{},
		kick: make(chan struct{}, 1), arm: make(chan struct{}, 1),
		quit: make(chan struct{}), stopped: make(chan struct{}),
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// run is the flusher: it sends pending acks when SendAcks asks, and the
// last ones when the consumer stops.
func (c *consumer) run() {
	defer close(c.stopped)
	t := time.NewTimer(time.Hour)
	t.Stop()
	for {
		quit := false
		select {
		case <-c.kick:
		case <-c.arm:
			t.Reset(ackDelay)
			select {
			case <-c.kick:
			case <-t.C:
			case <-c.quit:
				quit = true
			}
			t.Stop()
		case <-c.quit:
			quit = true
		}
		// A failed send means the channel is gone: its delivery tags are
		// void (an ack of them on another channel is a protocol error), so
		// it cannot be retried; the broker redelivers those messages, and
		// the next consumer starts afresh. The flush after quit is the last
		// one: it runs after stop was called, so it sees every ack recorded
		// before (an ack recorded while an earlier flush was sending is not
		// lost).
		if err := c.flush(); err != nil && c.log != nil {
			c.log.Warn("omnibus rabbitmq: acks not sent, the channel is gone; the broker redelivers those messages",
				"queues", c.queues, "error", err)
		}
		if quit {
			return
		}
	}
}

// stop ends the flusher after it sent the pending acks, and waits for it
// when it was started.
func (c *consumer) stop(started bool) {
	c.once.Do(func() { close(c.quit) })
	if started {
		<-c.stopped
	}
}

// acker is the part of *amqp.Channel that settles deliveries.
type acker interface {
	Ack(tag uint64, multiple bool) error
	Nack(tag uint64, multiple, requeue bool) error
	IsClosed() bool
	Close() error
	// Cancel, Consume and Qos are the synchronous round trips after the
	// last acks (see consumer.sync).
	Cancel(consumer string, noWait bool) error
	Consume(queue, consumer string, autoAck, exclusive, noLocal, noWait bool, args amqp.Table) (<-chan amqp.Delivery, error)
	Qos(prefetchCount, prefetchSize int, global bool) error
}

// cancelTags returns the consumers to cancel before the channel closes:
// none on single-active-consumer queues, where a cancel hands the queue to
// the next member while this one's unacked messages are still out (they
// would come back after messages the next member already received).
func (c *consumer) cancelTags() []string {
	if c.sac {
		return nil
	}
	return c.tags
}

// idleTags returns, for a consumer whose consumers are not cancelled before
// the channel closes (cancelTags), the tags of a second consumer of each of
// its queues (idleTags()[i] consumes queues[i]) that sync starts and
// cancels, for the round trip through each queue's log.
func (c *consumer) idleTags() []string {
	if !c.sac {
		return nil
	}
	out := make([]string, len(c.tags))
	for i, t := range c.tags {
		out[i] = t + ".sync"
	}
	return out
}

// queueOf returns the queue a delivery with consumer tag came from.
func (c *consumer) queueOf(tag string) string {
	for i, t := range c.tags {
		if t == tag {
			return c.queues[i]
		}
	}
	return c.queues[0]
}

// ackToken is the driver.AckID of a delivery.
type ackToken struct {
	c       *consumer
	queue   string // the queue it came from (a partition's, with partitions=N)
	tag     uint64
	d       kept
	attempt int
}

// kept is what a delayed nack needs of a delivery to publish it again
// (only these fields of amqp.Delivery, to keep every delivery small).
type kept struct {
	Headers                                 amqp.Table
	MessageId, ContentType, ContentEncoding string
	CorrelationId, ReplyTo, Type, AppId     string
	Timestamp                               time.Time
	Body                                    []byte
}

// OpenSubscription declares the subscription's queue (bound to the topic's
// exchange) and starts consuming it before returning, so every message
// published after it returns reaches the subscription.
func (b *Broker) OpenSubscription(ctx context.Context, topic string, opts driver.SubscriptionOptions) (driver.Subscription, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	s := &subscription{b: b, topic: topic, group: opts.Group}
	if opts.Group == "" {
		s.anon = true // a classic queue
		s.queue = shorten(topic + ".anon." + uuid.NewString())
	} else {
		s.queue = queueName(topic, opts.Group)
		s.quorum = b.opts.QueueType == QueueQuorum
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
	queues := []string{s.queue}
	if !s.anon {
		queues = s.b.topo.groupQueues(s.topic, s.group)
	}
	base := "omnibus-" + uuid.NewString()
	tags := make([]string, len(queues))
	dls := make([]<-chan amqp.Delivery, len(queues))
	for i, q := range queues {
		tags[i] = base
		if len(queues) > 1 {
			tags[i] = base + ".p" + strconv.Itoa(i)
		}
		if dls[i], err = ch.Consume(q, tags[i], false, false, false, false, nil); err != nil {
			return fail(fmt.Errorf("rabbitmq: consume queue %q: %w", q, err))
		}
	}
	s.cur = newConsumer(ch, nil, s.qos)
	s.cur.deliveries = merge(dls, s.cur.quit)
	s.cur.tags, s.cur.queues, s.cur.log = tags, queues, s.b.opts.Logger
	s.cur.sac = !s.anon && s.b.opts.Partitions > 0
	go s.cur.run()
	return s.cur, nil
}

// merge returns the deliveries of every partition queue's consumer on one
// channel, each queue's in order, closed once all of them are (the AMQP
// channel is gone), or given up when quit closes (the consumer stopped).
// With one queue it is that queue's channel.
func merge(dls []<-chan amqp.Delivery, quit <-chan struct{}) <-chan amqp.Delivery {
	if len(dls) == 1 {
		return dls[0]
	}
	out := make(chan amqp.Delivery)
	var wg sync.WaitGroup
	for _, dl := range dls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range dl {
				select {
				case out <- d:
				case <-quit:
					return // the broker redelivers what was not taken
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(out)
	}()
	return out
}

// lost forgets c so that the next receive starts a new consumer.
func (s *subscription) lost(c *consumer) {
	s.mu.Lock()
	if s.cur == c {
		s.cur = nil
	}
	s.mu.Unlock()
	c.stop(false) // the channel is gone: nothing left to send
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
		return nil, driver.Transient(fmt.Errorf("rabbitmq: resume consuming %q: %w", s.queue, err))
	}
	if c.sac {
		// One at a time: a delivery the portable layer buffered and gives
		// back on Close would be requeued while this member is still the
		// active consumer, come back to it behind later messages of its
		// key, and reach the next member in that order. Left with the
		// broker instead, every unacked delivery returns in queue order
		// when the channel closes.
		max = 1
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

// inbound is a received message and its ack token, allocated together.
type inbound struct {
	m driver.Message
	t ackToken
}

func (s *subscription) message(c *consumer, d amqp.Delivery) *driver.Message {
	in := &inbound{m: driver.Message{ID: d.MessageId, Payload: d.Body, Topic: s.topic}}
	m := &in.m
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
	// x-delivery-count is the broker's only on a quorum queue's redelivery
	// (RabbitMQ then sets it, replacing any value a publisher gave); on a
	// first delivery, or on a classic queue, it is the publisher's and
	// says nothing.
	switch {
	case s.quorum && d.Redelivered && counted && count > 0:
		attempt += count
	case d.Redelivered:
		attempt++
	}
	m.Attempt = attempt
	queue := s.queue
	if c != nil && len(c.queues) > 1 {
		queue = c.queueOf(d.ConsumerTag)
	}
	in.t = ackToken{c: c, queue: queue, tag: d.DeliveryTag, attempt: attempt, d: kept{
		Headers: d.Headers, MessageId: d.MessageId, ContentType: d.ContentType, ContentEncoding: d.ContentEncoding,
		CorrelationId: d.CorrelationId, ReplyTo: d.ReplyTo, Type: d.Type, AppId: d.AppId,
		Timestamp: d.Timestamp, Body: d.Body,
	}}
	m.AckID = &in.t
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
	// Each message goes back to the queue it came from (its partition's
	// with partitions=N), or to that queue's delay queue.
	targets := map[string]string{}
	for _, t := range ts {
		targets[t.queue] = t.queue
	}
	var prepare func(context.Context) error
	if delay > 0 {
		ms := delayBucket(delay)
		prepare = func(ctx context.Context) error {
			for q := range targets {
				dq, err := s.b.topo.ensureDelayQueue(ctx, q, ms)
				if err != nil {
					return err
				}
				targets[q] = dq
			}
			return nil
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
			exchange: "", key: targets[t.queue], mandatory: true, id: t.d.MessageId,
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
	// Route through the same targets on every round (declared by prepare).
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
			for i, t := range ts {
				out[i].key = targets[t.queue]
			}
			return nil
		}
	}
	if err := s.b.pool.send(ctx, &batch{out: out}, deadline, prep); err != nil {
		// Some copies may be stored: requeue the originals anyway
		// (at-least-once; the copies carry the same message ID).
		return errors.Join(fmt.Errorf("republish for redelivery: %w", err), c.settle(nil, tags(ts)))
	}
	return c.settle(tags(ts), nil)
}

func errChannelGone(n int) error {
	return fmt.Errorf("the channel of these %d deliveries was closed; the broker redelivers them", n)
}

// SendAcks records the acks and leaves the frames to each consumer's
// flusher (see consumer); it never blocks on the network. With
// Traits.InlineAcks the portable layer calls it from Delivery.Ack.
func (s *subscription) SendAcks(ctx context.Context, ids []driver.AckID) error {
	var errs []error
	for _, id := range ids {
		t, ok := id.(*ackToken)
		if !ok {
			return fmt.Errorf("rabbitmq: ack id %T is not from this adapter: %w", id, driver.ErrInvalid)
		}
		if err := t.c.ackInline(t.tag); err != nil {
			errs = append(errs, fmt.Errorf("rabbitmq: ack delivery from %q: %w", s.queue, err))
		}
	}
	return errors.Join(errs...)
}

func (c *consumer) ackInline(tag uint64) error {
	if c.ch.IsClosed() {
		return errChannelGone(1)
	}
	c.mu.Lock()
	if !c.mark(tag, true) {
		c.mu.Unlock()
		return nil
	}
	n, first := c.unsent, !c.armed
	c.armed = true
	c.mu.Unlock()
	switch {
	case n >= c.every:
		signal(c.kick)
	case first:
		signal(c.arm)
	}
	return nil
}

// mark records tag as settled: acked (to be sent) or requeued (sent by the
// caller). It reports false for a tag already settled. c.mu is held.
func (c *consumer) mark(tag uint64, ack bool) bool {
	switch {
	case tag < c.base:
		return false
	case tag == c.base:
		if ack {
			c.multi = tag
		}
		c.base++
		for {
			pending, ok := c.done[c.base]
			if !ok {
				break
			}
			if pending {
				// Its ack is not sent yet: the multiple ack covers it.
				c.multi = c.base
			}
			delete(c.done, c.base)
			c.base++
		}
	default:
		if _, dup := c.done[tag]; dup {
			return false
		}
		c.done[tag] = ack
		if ack {
			c.singles = append(c.singles, tag)
		}
	}
	if ack {
		c.unsent++
	}
	return true
}

// take returns the pending acks as frames: the tag to ack with multiple
// (0 for none) and the single tags, in order. c.mu is held.
func (c *consumer) take(singles []uint64) (uint64, []uint64) {
	multi := c.multi
	for _, t := range c.singles {
		// A single still in done is above base, not covered by multi;
		// one that left done was passed by base and is covered by multi.
		if c.done[t] {
			c.done[t] = false
			singles = append(singles, t)
		}
	}
	slices.Sort(singles)
	c.multi, c.singles, c.unsent, c.armed = 0, c.singles[:0], 0, false
	return multi, singles
}

// send writes the settle frames: requeues first, so that no multiple ack
// can cover them, then the coalesced acks. c.sendMu is held.
func (c *consumer) send(requeue []uint64, multi uint64, singles []uint64) error {
	for _, t := range requeue {
		if err := c.ch.Nack(t, false, true); err != nil {
			return fmt.Errorf("basic.nack: %w", err)
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

// flush sends the pending acks.
func (c *consumer) flush() error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.mu.Lock()
	multi, singles := c.take(nil)
	c.mu.Unlock()
	if multi == 0 && len(singles) == 0 {
		return nil
	}
	if c.ch.IsClosed() {
		return errChannelGone(len(singles) + 1)
	}
	return c.send(nil, multi, singles)
}

// settle acks and requeues delivery tags of this channel at once (with any
// acks pending from SendAcks). A run of settled tags starting at the lowest
// unsettled one is acked with a single basic.ack multiple=true; other acks
// go out one by one, so that no ack waits behind a delivery still being
// handled.
func (c *consumer) settle(acks, requeue []uint64) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.ch.IsClosed() {
		return errChannelGone(len(acks) + len(requeue))
	}
	c.mu.Lock()
	var nacks []uint64
	for _, t := range requeue {
		if c.mark(t, false) {
			nacks = append(nacks, t)
		}
	}
	for _, t := range acks {
		c.mark(t, true)
	}
	multi, singles := c.take(nil)
	c.mu.Unlock()
	return c.send(nacks, multi, singles)
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
	var err error
	if c != nil {
		c.stop(true) // send the acks still pending,
		if err = c.sync(s.qos, closeSyncTimeout); err != nil {
			err = fmt.Errorf("rabbitmq: close subscription to %q: %w", s.queue, err)
		}
		_ = c.ch.Close() // then give the rest back
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
	return err
}

// closeSyncTimeout bounds the round trip that Close makes after the last
// acks (a broker that does not answer must not hold Close).
const closeSyncTimeout = 5 * time.Second

// sync makes the broker finish with the acks sent so far before the
// channel closes, bounded by timeout. On a quorum queue the channel turns
// each ack frame into a command of the queue's log, and while 32 of its
// commands to a queue are not yet applied it holds further settlements
// back, sending them only when the queue reports earlier commands applied;
// a channel closed in that state drops them, and the queue returns those
// messages as unacked (tens of 100 out-of-order acks were redelivered after
// a clean Close on RabbitMQ 3.10). So before closing, the channel is made
// to wait, on every queue it consumes, for a synchronous command of the
// queue's log (applied after the settlements sent before it), then to
// answer basic.qos (handled after the queue's reports, so the held-back
// settlements are sent before the close). The synchronous command is
// basic.cancel of the consumer; on single-active-consumer queues
// (partitions), where cancelling would hand the queue to the next member
// while this one's unacked messages are still out (see cancelTags), it is
// basic.consume then basic.cancel of a second, idle consumer of the queue
// (the queue keeps it waiting behind the active one). A basic.qos round
// trip alone did not prevent the loss.
func (c *consumer) sync(qos int, timeout time.Duration) error {
	if c.ch.IsClosed() {
		return errChannelGone(0)
	}
	done := make(chan error, 1)
	go func() {
		for _, tag := range c.cancelTags() {
			if err := c.ch.Cancel(tag, false); err != nil {
				done <- err
				return
			}
		}
		for i, tag := range c.idleTags() {
			if _, err := c.ch.Consume(c.queues[i], tag, false, false, false, false, nil); err != nil {
				done <- err
				return
			}
			if err := c.ch.Cancel(tag, false); err != nil {
				done <- err
				return
			}
		}
		done <- c.ch.Qos(qos, 0, false)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("confirm the last acks (basic.consume, basic.cancel and basic.qos round trips): %w", err)
		}
		return nil
	case <-t.C:
		return fmt.Errorf("confirm the last acks: no answer to basic.consume, basic.cancel or basic.qos within %v; the broker may redeliver acked messages", timeout)
	}
}
