package rocketmq

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	rmq "github.com/apache/rocketmq-clients/golang/v5"
	v2 "github.com/apache/rocketmq-clients/golang/v5/protocol/v2"
	"github.com/google/uuid"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// awaitDuration is the long poll of one Receive (the proxy needs at least
// 5 s).
const awaitDuration = 10 * time.Second

// minNackDelay is the shortest invisibility a nack sets.
const minNackDelay = time.Second

// maxNackDelay is the longest (the proxy's maximum invisible time).
const maxNackDelay = 12 * time.Hour

// delivery is a message the subscription holds until Ack or Nack.
type delivery struct {
	mv   *rmq.MessageView
	done atomic.Bool
}

type subscription struct {
	b      *Broker
	topic  string
	group  string
	sc     rmq.SimpleConsumer
	msgs   chan *driver.Message // cap prefetch
	credit chan struct{}        // one token per free prefetch slot
	cancel context.CancelFunc   // stops the receive loop
	loop   chan struct{}        // closed when the receive loop returned
	closed chan struct{}

	mu       sync.Mutex
	isClosed bool
	held     map[*delivery]struct{}
}

// OpenSubscription starts a simple consumer for the group (or a private
// anonymous group) on topic.
func (b *Broker) OpenSubscription(ctx context.Context, topic string, opts driver.SubscriptionOptions) (driver.Subscription, error) {
	if b.isClosed() {
		return nil, errClosedBroker
	}
	if err := checkName("topic", topic, 127); err != nil {
		return nil, err
	}
	group := opts.Group
	if group == "" {
		group = "omnibus-anon-" + strings.ReplaceAll(uuid.NewString(), "-", "")
	} else if err := checkName("group", group, 120); err != nil {
		return nil, err
	}
	routes, err := b.ensureTopic(ctx, topic, true)
	if err != nil {
		return nil, err
	}
	if len(b.o.Brokers) > 0 {
		actx, cancel := context.WithTimeout(ctx, b.o.SendTimeout)
		defer cancel()
		for _, addr := range b.o.Brokers {
			if err := b.adm.createGroup(actx, addr, group, b.o.MaxReconsume); err != nil {
				return nil, driver.Transient(fmt.Errorf("rocketmq: create group %q on broker %s: %w", group, addr, err))
			}
		}
		if err := b.adm.startGroupAt(actx, routes, topic, group, opts.StartFromOldest || b.o.StartOldest); err != nil {
			return nil, driver.Transient(fmt.Errorf("rocketmq: %w", err))
		}
	}
	sc, err := rmq.NewSimpleConsumer(b.o.config(group),
		rmq.WithSimpleAwaitDuration(awaitDuration),
		rmq.WithSimpleSubscriptionExpressions(map[string]*rmq.FilterExpression{topic: rmq.SUB_ALL}),
	)
	if err != nil {
		return nil, fmt.Errorf("rocketmq: new consumer for group %q: %w", group, err)
	}
	if err := start(ctx, b.o.SendTimeout, sc); err != nil {
		return nil, fmt.Errorf("rocketmq: start consumer of group %q on %q: %w", group, topic, err)
	}
	lctx, cancel := context.WithCancel(context.Background())
	s := &subscription{
		b: b, topic: topic, group: group, sc: sc,
		msgs:   make(chan *driver.Message, b.o.Prefetch),
		credit: make(chan struct{}, b.o.Prefetch),
		cancel: cancel,
		loop:   make(chan struct{}),
		closed: make(chan struct{}),
		held:   map[*delivery]struct{}{},
	}
	for range b.o.Prefetch {
		s.credit <- struct{}{}
	}
	go s.receiveLoop(lctx)
	return s, nil
}

// receiveLoop receives as many messages as there are free prefetch slots
// (at most 32 a call) until Close.
func (s *subscription) receiveLoop(ctx context.Context) {
	defer close(s.loop)
	backoff := 100 * time.Millisecond
	for {
		select {
		case <-s.credit:
		case <-ctx.Done():
			return
		}
		n := 1
	take:
		for n < 32 {
			select {
			case <-s.credit:
				n++
			default:
				break take
			}
		}
		mvs, err := s.sc.Receive(ctx, int32(n), s.b.o.Invisible)
		for range n - len(mvs) {
			s.credit <- struct{}{}
		}
		if ctx.Err() != nil {
			// Messages the proxy handed over as the loop stopped come
			// back when their invisibility ends.
			return
		}
		if err != nil {
			var st *rmq.ErrRpcStatus
			if errors.As(err, &st) && v2.Code(st.Code) == v2.Code_MESSAGE_NOT_FOUND {
				backoff = 100 * time.Millisecond
				continue
			}
			s.b.log.Warn("rocketmq: receive failed; retrying", "group", s.group, "topic", s.topic, "err", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		for _, mv := range mvs {
			d := &delivery{mv: mv}
			m := fromRocket(s.topic, mv)
			m.AckID = d
			s.mu.Lock()
			s.held[d] = struct{}{}
			s.mu.Unlock()
			s.msgs <- m // never blocks: one slot per credit
		}
	}
}

func fromRocket(topic string, mv *rmq.MessageView) *driver.Message {
	props := mv.GetProperties()
	m := &driver.Message{
		Topic:   topic,
		Payload: mv.GetBody(),
		ID:      props[propID],
		Key:     props[propKey],
		Attempt: int(mv.GetDeliveryAttempt()),
	}
	if t := mv.GetBornTimestamp(); t != nil {
		m.PublishedAt = *t
	}
	if m.Attempt < 1 {
		m.Attempt = 1
	}
	if m.ID == "" {
		m.ID = mv.GetMessageId()
	}
	if props[propEmpty] == "1" {
		m.Payload = nil
	}
	for k, v := range props {
		if name, ok := strings.CutPrefix(k, propMetaPref); ok {
			if m.Metadata == nil {
				m.Metadata = map[string]string{}
			}
			m.Metadata[name] = v
		}
	}
	return m
}

func (s *subscription) errClosed() error {
	return fmt.Errorf("rocketmq: subscription of group %q on %q closed: %w", s.group, s.topic, driver.ErrClosed)
}

// ReceiveBatch waits for one delivery, then takes whatever else is ready,
// up to max.
func (s *subscription) ReceiveBatch(ctx context.Context, max int) ([]*driver.Message, error) {
	var out []*driver.Message
	select {
	case m := <-s.msgs:
		out = append(out, m)
	case <-s.closed:
		return nil, s.errClosed()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for len(out) < max {
		select {
		case m := <-s.msgs:
			out = append(out, m)
		default:
			return out, nil
		}
	}
	return out, nil
}

// take claims the deliveries behind ids (each once) and frees their
// prefetch slots.
func (s *subscription) take(ids []driver.AckID) ([]*delivery, error) {
	var ds []*delivery
	for _, id := range ids {
		d, ok := id.(*delivery)
		if !ok {
			return nil, fmt.Errorf("rocketmq: ack ID of type %T: %w", id, driver.ErrInvalid)
		}
		ds = append(ds, d)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return nil, s.errClosed()
	}
	out := ds[:0]
	for _, d := range ds {
		if d.done.Swap(true) {
			continue
		}
		delete(s.held, d)
		out = append(out, d)
		s.credit <- struct{}{}
	}
	return out, nil
}

// eachParallel runs f(i) for i in [0, n), at most 8 at a time, and
// returns the error of the smallest i that failed.
func eachParallel(n int, f func(i int) error) error {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
		firstIdx = n
	)
	sem := make(chan struct{}, 8)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := f(i); err != nil {
				mu.Lock()
				defer mu.Unlock()
				if i < firstIdx {
					firstIdx, firstErr = i, err
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// settle runs f for each delivery (see eachParallel).
func settle(ds []*delivery, f func(*delivery) error) error {
	return eachParallel(len(ds), func(i int) error { return f(ds[i]) })
}

// SendAcks acknowledges each delivery on the broker.
func (s *subscription) SendAcks(ctx context.Context, ids []driver.AckID) error {
	ds, err := s.take(ids)
	if err != nil {
		return err
	}
	return settle(ds, func(d *delivery) error {
		actx, cancel := context.WithTimeout(ctx, s.b.o.SendTimeout)
		defer cancel()
		if err := s.sc.Ack(actx, d.mv); err != nil {
			return driver.Transient(fmt.Errorf("rocketmq: ack message %s of group %q: %w", d.mv.GetMessageId(), s.group, rpcErr(err)))
		}
		return nil
	})
}

// SendNacks makes each delivery visible to the group again after delay
// (at least 1 s, at most 12 h).
func (s *subscription) SendNacks(_ context.Context, ids []driver.AckID, delay time.Duration) error {
	if delay > maxNackDelay {
		s.b.log.Warn("rocketmq: nack delay above the proxy's largest invisible time; using 12h", "delay", delay, "group", s.group)
	}
	delay = min(max(delay, minNackDelay), maxNackDelay)
	ds, err := s.take(ids)
	if err != nil {
		return err
	}
	return settle(ds, func(d *delivery) error {
		if err := s.sc.ChangeInvisibleDuration(d.mv, delay); err != nil {
			return driver.Transient(fmt.Errorf("rocketmq: nack message %s of group %q: %w", d.mv.GetMessageId(), s.group, rpcErr(err)))
		}
		return nil
	})
}

// Close stops receiving, makes every held delivery visible to the group
// again, and stops the consumer.
func (s *subscription) Close() error {
	s.mu.Lock()
	if s.isClosed {
		s.mu.Unlock()
		return nil
	}
	s.isClosed = true
	close(s.closed)
	held := make([]*delivery, 0, len(s.held))
	for d := range s.held {
		if !d.done.Swap(true) {
			held = append(held, d)
		}
	}
	s.held = nil
	s.mu.Unlock()
	s.cancel()
	<-s.loop
	// Deliveries the loop queued after the snapshot above.
	for {
		select {
		case m := <-s.msgs:
			if d := m.AckID.(*delivery); !d.done.Swap(true) {
				held = append(held, d)
			}
			continue
		default:
		}
		break
	}
	err := settle(held, func(d *delivery) error {
		return s.sc.ChangeInvisibleDuration(d.mv, minNackDelay)
	})
	if err != nil {
		s.b.log.Warn("rocketmq: close: a held delivery comes back only when its invisibility ends", "group", s.group, "err", err)
	}
	if err := s.sc.GracefulStop(); err != nil {
		return fmt.Errorf("rocketmq: close consumer of group %q: %w", s.group, err)
	}
	return nil
}
