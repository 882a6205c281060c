package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// subscription is one driver.Subscription: a consumer-group member (group
// != "") or a direct reader of every partition (group == "").
type subscription struct {
	b          *Broker
	topic      string
	group      string
	fromOldest bool

	out chan *driver.Message // first deliveries, in partition order

	// Nacked messages waiting for redelivery (timers push here).
	redoMu   sync.Mutex
	redo     []*driver.Message
	redoWake chan struct{}

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	cg     *kafkago.ConsumerGroup

	ready     chan struct{} // closed after the first assignment started
	readyOnce sync.Once
	readyErr  error

	closeOnce sync.Once
}

// partition is this member's hold on one partition for one assignment
// (generation). Acks of an earlier assignment never touch a later one.
type partition struct {
	s   *subscription
	id  int
	gen int32

	mu        sync.Mutex
	tracker   *offsetTracker
	committed int64 // last offset committed to the group
	revoked   bool
}

// ackToken is the AckID of one delivery.
type ackToken struct {
	p       *partition
	offset  int64
	msg     *driver.Message
	attempt int
}

// OpenSubscription implements driver.Broker. With a group it joins the
// consumer group and returns once the first assignment is running; without
// one it reads every partition directly from its current end (or start).
func (b *Broker) OpenSubscription(ctx context.Context, topic string, opts driver.SubscriptionOptions) (driver.Subscription, error) {
	if err := b.enter(); err != nil {
		return nil, fmt.Errorf("kafka: subscribe to %q: %w", topic, err)
	}
	defer b.pending.Done()
	tm, err := b.topic(ctx, topic, true)
	if err != nil {
		return nil, err
	}
	buf := max(opts.MaxBatch, 64)
	sctx, cancel := context.WithCancel(context.Background())
	s := &subscription{
		b: b, topic: topic, group: opts.Group,
		fromOldest: opts.StartFromOldest || b.opts.StartFromOldest,
		out:        make(chan *driver.Message, buf),
		redoWake:   make(chan struct{}, 1),
		ctx:        sctx, cancel: cancel,
		ready: make(chan struct{}),
	}
	if s.group == "" {
		if err := s.startDirect(ctx, tm); err != nil {
			s.Close()
			return nil, err
		}
		return s, nil
	}
	start := kafkago.LastOffset
	if s.fromOldest {
		start = kafkago.FirstOffset
	}
	s.cg, err = kafkago.NewConsumerGroup(kafkago.ConsumerGroupConfig{
		ID:                s.group,
		Brokers:           b.opts.Brokers,
		Dialer:            b.dialer,
		Topics:            []string{topic},
		HeartbeatInterval: b.opts.HeartbeatInterval,
		SessionTimeout:    b.opts.SessionTimeout,
		RebalanceTimeout:  b.opts.RebalanceTimeout,
		JoinGroupBackoff:  500 * time.Millisecond,
		StartOffset:       start,
		Timeout:           b.opts.DialTimeout,
		ErrorLogger: kafkago.LoggerFunc(func(f string, a ...any) {
			b.log.Debug("omnibus: kafka: consumer group: "+fmt.Sprintf(f, a...), "topic", topic, "group", s.group)
		}),
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("kafka: join group %q on topic %q: %v: %w", s.group, topic, err, driver.ErrInvalid)
	}
	s.wg.Add(1)
	go s.runGroup()
	wait := max(30*time.Second, 2*b.opts.RebalanceTimeout)
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-s.ready:
		if s.readyErr != nil {
			s.Close()
			return nil, s.readyErr
		}
		return s, nil
	case <-ctx.Done():
		s.Close()
		return nil, fmt.Errorf("kafka: join group %q on topic %q: %w", s.group, topic, ctx.Err())
	case <-t.C:
		s.Close()
		return nil, fmt.Errorf("kafka: join group %q on topic %q: no assignment within %v", s.group, topic, wait)
	}
}

func (s *subscription) markReady(err error) {
	s.readyOnce.Do(func() {
		s.readyErr = err
		close(s.ready)
	})
}

// runGroup follows the group's generations until Close.
func (s *subscription) runGroup() {
	defer s.wg.Done()
	for {
		gen, err := s.cg.Next(s.ctx)
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, kafkago.ErrGroupClosed) {
				return
			}
			if !errors.Is(err, kafkago.RebalanceInProgress) {
				s.b.log.Warn("omnibus: kafka: group join failed, retrying", "topic", s.topic, "group", s.group, "error", err)
			}
			continue
		}
		gen.Start(func(gctx context.Context) { s.runGeneration(gctx, gen) })
	}
}

// runGeneration consumes this member's partitions for one generation:
// resolves and commits start offsets, fetches, commits acked offsets every
// CommitInterval, and on the generation's end (rebalance or Close) stops
// fetching and commits a last time before the partitions move on.
func (s *subscription) runGeneration(gctx context.Context, gen *kafkago.Generation) {
	var assigned []int
	offsets := map[int]int64{}
	for _, pa := range gen.Assignments[s.topic] {
		assigned = append(assigned, pa.ID)
		offsets[pa.ID] = pa.Offset
	}
	sortInts(assigned)
	// A partition with no committed offset starts at start=; resolve it and
	// commit it at once so that the next owner after a rebalance starts
	// here too and never skips what was published meanwhile.
	var unresolved []int
	for _, p := range assigned {
		if offsets[p] < 0 {
			unresolved = append(unresolved, p)
		}
	}
	if len(unresolved) > 0 {
		rctx, cancel := context.WithTimeout(gctx, s.b.opts.WriteTimeout) // ends with the generation (rebalance or Close)
		resolved, err := s.b.resolveOffsets(rctx, s.topic, unresolved, s.fromOldest)
		cancel()
		if err != nil {
			s.b.log.Warn("omnibus: kafka: resolve start offsets failed; leaving generation to retry", "topic", s.topic, "group", s.group, "error", err)
			return
		}
		if err := gen.CommitOffsets(map[string]map[int]int64{s.topic: resolved}); err != nil {
			s.b.log.Warn("omnibus: kafka: commit start offsets failed; leaving generation to retry", "topic", s.topic, "group", s.group, "error", err)
			return
		}
		for p, o := range resolved {
			offsets[p] = o
		}
	}
	parts := make([]*partition, 0, len(assigned))
	for _, id := range assigned {
		parts = append(parts, &partition{s: s, id: id, gen: gen.ID, tracker: newOffsetTracker(offsets[id]), committed: offsets[id]})
	}
	s.b.log.Debug("omnibus: kafka: assigned", "topic", s.topic, "group", s.group, "generation", gen.ID, "partitions", assigned)
	fctx, stopFetch := context.WithCancel(gctx)
	var fetchers sync.WaitGroup
	for _, p := range parts {
		fetchers.Add(1)
		go func() {
			defer fetchers.Done()
			s.fetch(fctx, p)
		}()
	}
	s.markReady(nil)

	commit := func() {
		offs := map[int]int64{}
		for _, p := range parts {
			p.mu.Lock()
			if c := p.tracker.committable(); c > p.committed {
				offs[p.id] = c
			}
			p.mu.Unlock()
		}
		if len(offs) == 0 {
			return
		}
		if err := gen.CommitOffsets(map[string]map[int]int64{s.topic: offs}); err != nil {
			s.b.log.Warn("omnibus: kafka: commit offsets failed; uncommitted messages may be redelivered", "topic", s.topic, "group", s.group, "generation", gen.ID, "error", err)
			return
		}
		for _, p := range parts {
			if o, ok := offs[p.id]; ok {
				p.mu.Lock()
				p.committed = max(p.committed, o)
				p.mu.Unlock()
			}
		}
	}
	tick := time.NewTicker(s.b.opts.CommitInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			commit()
			continue
		case <-gctx.Done():
		}
		break
	}
	stopFetch()
	fetchers.Wait()
	// The partitions leave this member: acks from now on are dropped (the
	// next owner redelivers from the committed offset).
	commit()
	for _, p := range parts {
		p.mu.Lock()
		p.revoked = true
		p.mu.Unlock()
	}
	commit() // acks that raced the revocation above
}

// resolveOffsets returns the first (oldest) or last (next to be written)
// offset of each partition, retrying transient errors (a partition whose
// leader is still being elected) until ctx ends.
func (b *Broker) resolveOffsets(ctx context.Context, topic string, parts []int, oldest bool) (map[int]int64, error) {
	backoff := 20 * time.Millisecond
	for {
		offs, err := b.listOffsets(ctx, topic, parts, oldest)
		var kerr kafkago.Error
		if err == nil || !errors.As(err, &kerr) || !kerr.Temporary() {
			return offs, err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (b *Broker) listOffsets(ctx context.Context, topic string, parts []int, oldest bool) (map[int]int64, error) {
	reqs := make([]kafkago.OffsetRequest, 0, len(parts))
	for _, p := range parts {
		if oldest {
			reqs = append(reqs, kafkago.FirstOffsetOf(p))
		} else {
			reqs = append(reqs, kafkago.LastOffsetOf(p))
		}
	}
	res, err := b.client.ListOffsets(ctx, &kafkago.ListOffsetsRequest{Topics: map[string][]kafkago.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("kafka: list offsets of %q: %w", topic, err)
	}
	out := map[int]int64{}
	for _, po := range res.Topics[topic] {
		if po.Error != nil {
			return nil, fmt.Errorf("kafka: list offsets of %q partition %d: %w", topic, po.Partition, po.Error)
		}
		if oldest {
			out[po.Partition] = po.FirstOffset
		} else {
			out[po.Partition] = po.LastOffset
		}
	}
	for _, p := range parts {
		if _, ok := out[p]; !ok {
			return nil, fmt.Errorf("kafka: list offsets of %q: no answer for partition %d", topic, p)
		}
	}
	return out, nil
}

// startDirect reads every partition of the topic without a group.
func (s *subscription) startDirect(ctx context.Context, tm *topicMeta) error {
	offs, err := s.b.resolveOffsets(ctx, s.topic, tm.partitions, s.fromOldest)
	if err != nil {
		return err
	}
	for _, id := range tm.partitions {
		p := &partition{s: s, id: id, tracker: newOffsetTracker(offs[id]), committed: offs[id]}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.fetch(s.ctx, p)
		}()
	}
	s.markReady(nil)
	return nil
}

// fetch reads one partition from its tracker's start until ctx ends and
// hands each message, in order, to ReceiveBatch.
func (s *subscription) fetch(ctx context.Context, p *partition) {
	start := p.tracker.committable()
	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers:         s.b.opts.Brokers,
		Topic:           s.topic,
		Partition:       p.id,
		Dialer:          s.b.dialer,
		QueueCapacity:   1000,
		MinBytes:        1,
		MaxBytes:        max(s.b.opts.FetchMaxBytes, s.b.maxRecord+1024),
		MaxWait:         250 * time.Millisecond,
		ReadLagInterval: -1,
		ReadBackoffMin:  50 * time.Millisecond,
		ReadBackoffMax:  time.Second,
		ErrorLogger: kafkago.LoggerFunc(func(f string, a ...any) {
			s.b.log.Debug("omnibus: kafka: reader: "+fmt.Sprintf(f, a...), "topic", s.topic, "partition", p.id)
		}),
	})
	defer r.Close()
	if err := r.SetOffset(start); err != nil {
		s.b.log.Error("omnibus: kafka: cannot position reader", "topic", s.topic, "partition", p.id, "offset", start, "error", err)
		return
	}
	for {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.b.log.Warn("omnibus: kafka: fetch failed, retrying", "topic", s.topic, "partition", p.id, "error", err)
			t := time.NewTimer(200 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		dm := toDriver(&m)
		tok := &ackToken{p: p, offset: m.Offset, msg: dm, attempt: 1}
		dm.AckID = tok
		p.mu.Lock()
		fresh := p.tracker.delivered(m.Offset)
		p.mu.Unlock()
		if !fresh {
			continue // already delivered in this assignment
		}
		select {
		case s.out <- dm:
		case <-ctx.Done():
			return
		}
	}
}

func toDriver(m *kafkago.Message) *driver.Message {
	dm := &driver.Message{Payload: m.Value, Topic: m.Topic, PublishedAt: m.Time, Attempt: 1}
	if len(m.Key) > 0 {
		dm.Key = string(m.Key)
	}
	for _, h := range m.Headers {
		if h.Key == HeaderID {
			dm.ID = string(h.Value)
			continue
		}
		if dm.Metadata == nil {
			dm.Metadata = make(map[string]string, len(m.Headers))
		}
		dm.Metadata[h.Key] = string(h.Value)
	}
	if dm.ID == "" {
		// Written by a non-omnibus producer: the position is a stable ID.
		dm.ID = m.Topic + "/" + strconv.Itoa(m.Partition) + "/" + strconv.FormatInt(m.Offset, 10)
	}
	return dm
}

// ReceiveBatch implements driver.Subscription: redeliveries first, then
// new messages, up to max, blocking until at least one.
func (s *subscription) ReceiveBatch(ctx context.Context, max int) ([]*driver.Message, error) {
	var batch []*driver.Message
	take := func() {
		s.redoMu.Lock()
		n := min(len(s.redo), max-len(batch))
		batch = append(batch, s.redo[:n]...)
		s.redo = s.redo[n:]
		s.redoMu.Unlock()
		for len(batch) < max {
			select {
			case m := <-s.out:
				batch = append(batch, m)
				continue
			default:
			}
			break
		}
	}
	take()
	if len(batch) > 0 {
		return batch, nil
	}
	select {
	case m := <-s.out:
		batch = append(batch, m)
	case <-s.redoWake:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-s.ctx.Done():
		return nil, fmt.Errorf("kafka: receive from %q: %w", s.topic, driver.ErrClosed)
	}
	take()
	return batch, nil
}

// SendAcks implements driver.Subscription: each ack lets its partition's
// commit advance past it once every earlier delivery was acked too.
func (s *subscription) SendAcks(ctx context.Context, ids []driver.AckID) error {
	for _, id := range ids {
		t, ok := id.(*ackToken)
		if !ok {
			return fmt.Errorf("kafka: ack: foreign ack ID %T: %w", id, driver.ErrInvalid)
		}
		p := t.p
		p.mu.Lock()
		if !p.revoked {
			p.tracker.ack(t.offset)
		}
		p.mu.Unlock()
	}
	return nil
}

// SendNacks implements driver.Subscription: the message is redelivered in
// process after delay and holds its partition's commit back until acked.
func (s *subscription) SendNacks(ctx context.Context, ids []driver.AckID, delay time.Duration) error {
	for _, id := range ids {
		t, ok := id.(*ackToken)
		if !ok {
			return fmt.Errorf("kafka: nack: foreign ack ID %T: %w", id, driver.ErrInvalid)
		}
		if delay <= 0 {
			s.redeliver(t)
			continue
		}
		time.AfterFunc(delay, func() { s.redeliver(t) })
	}
	return nil
}

func (s *subscription) redeliver(t *ackToken) {
	if s.ctx.Err() != nil {
		return // closed: the next member starts at the committed offset
	}
	t.p.mu.Lock()
	revoked := t.p.revoked
	t.p.mu.Unlock()
	if revoked {
		return // the partition's next owner redelivers it
	}
	nt := &ackToken{p: t.p, offset: t.offset, msg: t.msg, attempt: t.attempt + 1}
	cp := *t.msg
	cp.Attempt = nt.attempt
	cp.AckID = nt
	s.redoMu.Lock()
	s.redo = append(s.redo, &cp)
	s.redoMu.Unlock()
	select {
	case s.redoWake <- struct{}{}:
	default:
	}
}

// Close implements driver.Subscription: it stops fetching, commits every
// contiguous acked offset, and leaves the group; whatever was not acked is
// delivered again to the group's next owner of its partition.
func (s *subscription) Close() error {
	s.closeOnce.Do(func() {
		if s.cg != nil {
			// Ends the current generation: runGeneration commits, then
			// the member leaves the group.
			_ = s.cg.Close()
		}
		s.cancel()
		s.wg.Wait()
		s.markReady(fmt.Errorf("kafka: subscription to %q closed: %w", s.topic, driver.ErrClosed))
	})
	return nil
}
