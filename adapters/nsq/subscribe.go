package nsq

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	gonsq "github.com/nsqio/go-nsq"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// OpenSubscription subscribes to the channel of opts.Group (an ephemeral
// channel when it is empty) and returns once nsqd confirmed it.
func (b *Broker) OpenSubscription(ctx context.Context, topic string, opts driver.SubscriptionOptions) (driver.Subscription, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	channel := opts.Group
	if channel == "" {
		var r [8]byte
		_, _ = rand.Read(r[:])
		channel = "omnibus-" + hex.EncodeToString(r[:]) + "#ephemeral"
	}
	inFlight := b.opts.MaxInFlight
	if inFlight == 0 {
		inFlight = max(opts.MaxBatch, 1)
	}
	cfg, err := b.config()
	if err != nil {
		return nil, err
	}
	cfg.MaxInFlight = inFlight
	s := &subscription{
		b:       b,
		topic:   topic,
		channel: channel,
		msgs:    make(chan *gonsq.Message, inFlight),
		held:    map[*gonsq.Message]struct{}{},
		closing: make(chan struct{}),
		touched: make(chan struct{}),
	}
	// The barrier: a SUB answered OK means the channel exists, so nothing
	// published from now on misses this group. The connection stays open
	// (RDY 0, it receives nothing) until Close, so that an ephemeral
	// channel lives until the consumer's own SUB arrived.
	if s.barrier, err = b.subscribeConfirmed(ctx, topic, channel, cfg); err != nil {
		return nil, err
	}
	if len(b.opts.Lookupd) == 0 {
		// Only the URL's nsqd: the adapter keeps one connection to it and
		// redials it itself when it is lost.
		s.cfg = cfg
		s.inFlight = inFlight
		s.loopDone = make(chan struct{})
		first, err := s.dial(ctx)
		if err != nil {
			s.barrier.Close()
			return nil, err
		}
		s.cur = first
		go s.reconnectLoop(first)
		go s.touchLoop()
		return s, nil
	}
	c, err := gonsq.NewConsumer(topic, channel, cfg)
	if err != nil {
		s.barrier.Close()
		return nil, fmt.Errorf("nsq: consumer for %q/%q: %v: %w", topic, channel, err, driver.ErrInvalid)
	}
	lb := newLogBridge(b.log, "consumer "+topic+"/"+channel)
	lb.quiet = &s.quiet
	c.SetLogger(lb, gonsq.LogLevelWarning)
	c.AddHandler(gonsq.HandlerFunc(s.handle))
	s.consumer = c
	stop := func() {
		c.Stop()
		s.barrier.Close()
	}
	if err := b.run(ctx, func() error { return c.ConnectToNSQD(b.addr) }, stop); err != nil {
		return nil, fmt.Errorf("nsq: subscribe %q/%q on %s: %w", topic, channel, b.addr, err)
	}
	if err := b.run(ctx, func() error { return c.ConnectToNSQLookupds(b.opts.Lookupd) }, stop); err != nil {
		return nil, fmt.Errorf("nsq: subscribe %q/%q through lookupd %v: %w", topic, channel, b.opts.Lookupd, err)
	}
	go s.touchLoop()
	return s, nil
}

// run calls fn on its own goroutine and waits for it at most
// ConnectTimeout (or ctx): go-nsq's connection calls take no context. When
// fn fails, or is given up on, undo runs once fn returned.
func (b *Broker) run(ctx context.Context, fn func() error, undo func()) error {
	ctx, cancel := context.WithTimeout(ctx, b.opts.ConnectTimeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		if err != nil {
			undo()
			return connectError(b.addr, err)
		}
		return nil
	case <-ctx.Done():
		go func() {
			<-done
			undo()
		}()
		return fmt.Errorf("no answer from nsqd within %v: %w", b.opts.ConnectTimeout, ctx.Err())
	}
}

// barrier is the delegate of the connection that confirms a SUB.
type barrier struct {
	answer chan error
}

func (d *barrier) send(err error) {
	select {
	case d.answer <- err:
	default:
	}
}

func (d *barrier) OnResponse(_ *gonsq.Conn, data []byte) {
	if string(data) == "OK" {
		d.send(nil)
	}
}
func (d *barrier) OnError(_ *gonsq.Conn, data []byte) {
	d.send(fmt.Errorf("nsqd refused SUB: %s", data))
}
func (d *barrier) OnMessage(_ *gonsq.Conn, m *gonsq.Message) {
	// RDY is 0: nsqd sends nothing. Should it, the message goes back.
	m.RequeueWithoutBackoff(0)
}
func (d *barrier) OnMessageFinished(*gonsq.Conn, *gonsq.Message) {}
func (d *barrier) OnMessageRequeued(*gonsq.Conn, *gonsq.Message) {}
func (d *barrier) OnBackoff(*gonsq.Conn)                         {}
func (d *barrier) OnContinue(*gonsq.Conn)                        {}
func (d *barrier) OnResume(*gonsq.Conn)                          {}
func (d *barrier) OnIOError(_ *gonsq.Conn, err error)            { d.send(err) }
func (d *barrier) OnHeartbeat(*gonsq.Conn)                       {}
func (d *barrier) OnClose(*gonsq.Conn) {
	d.send(fmt.Errorf("connection closed before nsqd answered SUB"))
}

// subscribeConfirmed opens a connection, subscribes it to topic/channel and
// waits for nsqd's OK.
func (b *Broker) subscribeConfirmed(ctx context.Context, topic, channel string, cfg *gonsq.Config) (*gonsq.Conn, error) {
	d := &barrier{answer: make(chan error, 1)}
	conn := gonsq.NewConn(b.addr, cfg, d)
	conn.SetLogger(newLogBridge(b.log, "subscribe "+topic+"/"+channel), gonsq.LogLevelWarning, "(%s)")
	ctx, cancel := context.WithTimeout(ctx, b.opts.ConnectTimeout)
	defer cancel()
	if err := b.connectConn(ctx, conn, func() error { return conn.WriteCommand(gonsq.Subscribe(topic, channel)) }); err != nil {
		return nil, fmt.Errorf("nsq: subscribe %q/%q on %s: %w", topic, channel, b.addr, err)
	}
	var err error
	select {
	case err = <-d.answer:
	case <-ctx.Done():
		err = fmt.Errorf("no answer to SUB within %v: %w", b.opts.ConnectTimeout, ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("nsq: subscribe %q/%q on %s: %w", topic, channel, b.addr, err)
	}
	return conn, nil
}

type subscription struct {
	b              *Broker
	topic, channel string
	consumer       *gonsq.Consumer // with lookupd; nil without
	barrier        *gonsq.Conn

	// Without lookupd: the connection to the URL's nsqd, redialed by
	// reconnectLoop when it is lost.
	cfg      *gonsq.Config
	inFlight int
	loopDone chan struct{} // closed when reconnectLoop returned

	msgs chan *gonsq.Message // handed over by go-nsq, not yet received

	mu     sync.Mutex
	held   map[*gonsq.Message]struct{} // in this process, not yet acked or nacked
	closed bool
	cur    *directConn // without lookupd: the current connection

	closing   chan struct{}
	quiet     atomic.Bool   // Close began: go-nsq's lost-connection lines are expected
	touched   chan struct{} // closed when touchLoop returned
	closeOnce sync.Once
}

// handle is go-nsq's handler: it keeps the message for Receive and leaves
// the answer (FIN, REQ) to Ack and Nack.
func (s *subscription) handle(m *gonsq.Message) error {
	m.DisableAutoResponse()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		m.RequeueWithoutBackoff(0)
		return nil
	}
	s.held[m] = struct{}{}
	s.mu.Unlock()
	select {
	case s.msgs <- m:
	case <-s.closing:
		// Close requeues everything in held.
	}
	return nil
}

// touchLoop resets nsqd's timeout of every held message every
// msg_timeout/2, so a slow handler does not get its message redelivered.
func (s *subscription) touchLoop() {
	defer close(s.touched)
	t := time.NewTicker(s.b.opts.MsgTimeout / 2)
	defer t.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
		}
		s.mu.Lock()
		held := make([]*gonsq.Message, 0, len(s.held))
		for m := range s.held {
			held = append(held, m)
		}
		s.mu.Unlock()
		for _, m := range held {
			m.Touch()
		}
	}
}

func (s *subscription) ReceiveBatch(ctx context.Context, max int) ([]*driver.Message, error) {
	var out []*driver.Message
	select {
	case m := <-s.msgs:
		out = append(out, s.message(m))
	case <-s.closing:
		return nil, fmt.Errorf("nsq: receive from %q/%q: %w", s.topic, s.channel, driver.ErrClosed)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for len(out) < max {
		select {
		case m := <-s.msgs:
			out = append(out, s.message(m))
		default:
			return out, nil
		}
	}
	return out, nil
}

func (s *subscription) message(m *gonsq.Message) *driver.Message {
	dm := &driver.Message{
		Topic:       s.topic,
		PublishedAt: time.Unix(0, m.Timestamp),
		Attempt:     int(m.Attempts),
		AckID:       m,
	}
	if !isEnvelope(m.Body) {
		dm.ID, dm.Payload = string(m.ID[:]), m.Body
		dm.Metadata = map[string]string{"omnibus-envelope": "none"}
		return dm
	}
	id, key, md, payload, err := decodeEnvelope(m.Body)
	if err != nil {
		s.b.log.Warn("nsq: delivering a body that is not a valid envelope as it is", "topic", s.topic, "channel", s.channel, "nsq_id", string(m.ID[:]), "error", err)
		dm.ID, dm.Payload = string(m.ID[:]), m.Body
		dm.Metadata = map[string]string{"omnibus-envelope": "malformed"}
		return dm
	}
	dm.ID, dm.Key, dm.Metadata, dm.Payload = id, key, md, payload
	return dm
}

// settle removes the messages of ids from held and returns them.
func (s *subscription) settle(ids []driver.AckID) ([]*gonsq.Message, error) {
	ms := make([]*gonsq.Message, 0, len(ids))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("nsq: %q/%q: %w", s.topic, s.channel, driver.ErrClosed)
	}
	for _, id := range ids {
		m, ok := id.(*gonsq.Message)
		if !ok {
			return nil, fmt.Errorf("nsq: ack ID of type %T is not from this adapter: %w", id, driver.ErrInvalid)
		}
		delete(s.held, m)
		ms = append(ms, m)
	}
	return ms, nil
}

// SendAcks sends FIN for each delivery. A delivery whose connection was lost
// is redelivered by nsqd.
func (s *subscription) SendAcks(_ context.Context, ids []driver.AckID) error {
	ms, err := s.settle(ids)
	for _, m := range ms {
		m.Finish()
	}
	return err
}

// SendNacks sends REQ with the delay (capped at max_req_timeout).
func (s *subscription) SendNacks(_ context.Context, ids []driver.AckID, delay time.Duration) error {
	if delay > s.b.opts.MaxReqTimeout {
		s.b.warnOnce.Do(func() {
			s.b.log.Warn("nsq: nack delay above max_req_timeout; nsqd redelivers after max_req_timeout",
				"delay", delay, "max_req_timeout", s.b.opts.MaxReqTimeout)
		})
		delay = s.b.opts.MaxReqTimeout
	}
	ms, err := s.settle(ids)
	for _, m := range ms {
		m.RequeueWithoutBackoff(delay)
	}
	return err
}

// Close stops the consumer (CLS), requeues every delivery still held,
// waits for the connections to close and closes the barrier connection.
func (s *subscription) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		held := s.held
		s.held = nil
		s.mu.Unlock()
		s.quiet.Store(true)
		close(s.closing)
		<-s.touched
		if s.consumer == nil {
			s.closeDirect(held)
			s.barrier.Close()
			return
		}
		s.consumer.Stop()
		for m := range held {
			m.RequeueWithoutBackoff(0)
		}
		t := time.NewTimer(s.b.opts.ConnectTimeout)
		select {
		case <-s.consumer.StopChan:
		case <-t.C:
			s.b.log.Warn("nsq: consumer did not stop in time", "topic", s.topic, "channel", s.channel, "timeout", s.b.opts.ConnectTimeout)
		}
		t.Stop()
		s.barrier.Close()
	})
	return nil
}
