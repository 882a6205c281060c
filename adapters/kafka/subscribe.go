package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/omnibusmq/omnibus/internal/wait"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// subscription is one driver.Subscription: a consumer-group member (group
// != "") or a direct reader of every partition (group == "").
type subscription struct {
	b          *Broker
	topic      string
	group      string
	fromOldest bool

	// The fetchers of the partitions append decoded messages to q (each
	// partition's in order) and ReceiveBatch takes them in slices: a message
	// costs no goroutine hand-off of its own. Nacked messages wait in redo
	// (timers push there) and go out first.
	qMu      sync.Mutex
	q        []*driver.Message // q[qHead:] are live
	qHead    int
	qCap     int // fetchers wait while q holds this many
	redo     []*driver.Message
	qWaiting bool          // ReceiveBatch waits on qWake
	qWake    chan struct{} // cap 1
	roomWait bool          // some fetcher waits on room
	room     chan struct{} // closed (and replaced) when q drops below qCap

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
	sctx, cancel := context.WithCancel(context.Background())
	s := &subscription{
		b: b, topic: topic, group: opts.Group,
		fromOldest: opts.StartFromOldest || b.opts.StartFromOldest,
		qCap:       max(2*opts.MaxBatch, 1024),
		qWake:      make(chan struct{}, 1),
		room:       make(chan struct{}),
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
	s.dropRevoked()
}

// dropRevoked removes from the queue the messages of partitions that left
// this member: their next owner delivers them again from the committed
// offset, so delivering them here too would only duplicate them.
func (s *subscription) dropRevoked() {
	s.qMu.Lock()
	defer s.qMu.Unlock()
	live := s.q[:s.qHead]
	for _, m := range s.q[s.qHead:] {
		if !m.AckID.(*ackToken).p.isRevoked() {
			live = append(live, m)
		}
	}
	clear(s.q[len(live):])
	s.q = live
	redo := s.redo[:0]
	for _, m := range s.redo {
		if !m.AckID.(*ackToken).p.isRevoked() {
			redo = append(redo, m)
		}
	}
	clear(s.redo[len(redo):])
	s.redo = redo
	s.roomLocked()
}

func (p *partition) isRevoked() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.revoked
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
		if !wait.Sleep(ctx, backoff) {
			return nil, err
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

// Fetch settings: a fetch waits at most fetchMaxWait for data; reading one
// fetch response (and waiting for room in the queue between its chunks) may
// take fetchReadTimeout before the connection is dropped and redialled.
const (
	fetchMaxWait     = 250 * time.Millisecond
	fetchReadTimeout = 10 * time.Second
	fetchChunk       = 256 // messages handed to the queue at a time
)

// fetch reads one partition from its tracker's start until ctx ends, on a
// connection of its own to the partition's leader (long polls never delay
// produce requests), and appends its messages, in order, to the queue in
// chunks as they are decoded.
func (s *subscription) fetch(ctx context.Context, p *partition) {
	p.mu.Lock()
	offset := p.tracker.committable()
	p.mu.Unlock()
	maxBytes := max(s.b.opts.FetchMaxBytes, s.b.maxRecord+1024)

	// Closing the connection when ctx ends unblocks a fetch at once.
	var connMu sync.Mutex
	var conn *kafkago.Conn
	setConn := func(c *kafkago.Conn) {
		connMu.Lock()
		if conn != nil {
			_ = conn.Close()
		}
		conn = c
		connMu.Unlock()
	}
	stop := context.AfterFunc(ctx, func() { setConn(nil) })
	defer stop()
	defer setConn(nil)

	fails := 0
	pause := func(err error) bool {
		if ctx.Err() != nil {
			return false
		}
		fails++
		d := min(50*time.Millisecond<<min(fails-1, 5), time.Second)
		s.b.log.Debug("omnibus: kafka: fetch failed, retrying", "topic", s.topic, "partition", p.id, "offset", offset, "backoff", d, "error", err)
		return wait.Sleep(ctx, d)
	}
	for ctx.Err() == nil {
		c, start, err := s.dialPartition(ctx, p.id, offset)
		if err != nil {
			if !pause(err) {
				return
			}
			continue
		}
		setConn(c)
		if ctx.Err() != nil {
			return
		}
		offset = start
		for {
			if !s.waitRoom(ctx) {
				return
			}
			var n int
			n, offset, err = s.readBatch(ctx, c, p, offset, maxBytes)
			if n > 0 {
				fails = 0
			}
			if err == nil || errors.Is(err, io.EOF) {
				continue
			}
			if errors.Is(err, kafkago.RequestTimedOut) {
				continue
			}
			if errors.Is(err, kafkago.OffsetOutOfRange) {
				first, last, oerr := s.offsetsOf(c)
				switch {
				case oerr != nil:
					err = oerr
				case offset < first:
					s.b.log.Warn("omnibus: kafka: committed offset is before the oldest retained message; skipping the deleted ones", "topic", s.topic, "partition", p.id, "from", offset, "to", first)
					offset = first
					continue
				case offset < last:
					continue
				}
			}
			if ctx.Err() != nil {
				return
			}
			setConn(nil)
			if !pause(err) {
				return
			}
			break
		}
	}
}

// dialPartition connects to the leader of partition id and positions the
// connection at offset (moved up to the oldest retained offset if the log no
// longer has it).
func (s *subscription) dialPartition(ctx context.Context, id int, offset int64) (*kafkago.Conn, int64, error) {
	var err error
	for _, addr := range s.b.opts.Brokers {
		var c *kafkago.Conn
		c, err = s.b.dialer.DialLeader(ctx, "tcp", addr, s.topic, id)
		if err != nil {
			continue
		}
		first, _, oerr := s.offsetsOf(c)
		if oerr != nil {
			_ = c.Close()
			return nil, 0, oerr
		}
		if offset < first {
			s.b.log.Warn("omnibus: kafka: committed offset is before the oldest retained message; skipping the deleted ones", "topic", s.topic, "partition", id, "from", offset, "to", first)
			offset = first
		}
		if _, err := c.Seek(offset, kafkago.SeekAbsolute|kafkago.SeekDontCheck); err != nil {
			_ = c.Close()
			return nil, 0, err
		}
		return c, offset, nil
	}
	return nil, 0, fmt.Errorf("kafka: connect to the leader of %q partition %d: %w", s.topic, id, err)
}

func (s *subscription) offsetsOf(c *kafkago.Conn) (first, last int64, err error) {
	_ = c.SetDeadline(time.Now().Add(s.b.opts.DialTimeout))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	return c.ReadOffsets()
}

// readBatch makes one fetch request and queues the messages of its answer.
// It returns how many it read, the next offset to fetch and the error that
// ended the batch (io.EOF when it was read to the end).
func (s *subscription) readBatch(ctx context.Context, c *kafkago.Conn, p *partition, offset int64, maxBytes int) (int, int64, error) {
	_ = c.SetReadDeadline(time.Now().Add(fetchMaxWait + fetchReadTimeout))
	batch := c.ReadBatchWith(kafkago.ReadBatchConfig{MinBytes: 1, MaxBytes: maxBytes, MaxWait: fetchMaxWait})
	defer batch.Close()
	n := 0
	chunk := make([]*driver.Message, 0, fetchChunk)
	for {
		m, err := batch.ReadMessage()
		if err != nil {
			if len(chunk) > 0 {
				s.push(p, chunk)
			}
			return n, offset, err
		}
		n++
		offset = m.Offset + 1
		rec := &record{tok: ackToken{p: p, offset: m.Offset, attempt: 1}} // one allocation for both
		dm := &rec.msg
		fillDriver(dm, &m)
		rec.tok.msg = dm
		dm.AckID = &rec.tok
		chunk = append(chunk, dm)
		if len(chunk) == fetchChunk {
			s.push(p, chunk)
			chunk = make([]*driver.Message, 0, fetchChunk)
			if !s.waitRoom(ctx) {
				return n, offset, ctx.Err()
			}
			_ = c.SetReadDeadline(time.Now().Add(fetchReadTimeout))
		}
	}
}

// push appends one partition's messages, in order, to the queue; offsets
// already delivered in this assignment are skipped, and nothing is queued
// once the partition was revoked.
func (s *subscription) push(p *partition, msgs []*driver.Message) {
	p.mu.Lock()
	if p.revoked {
		p.mu.Unlock()
		return
	}
	fresh := msgs[:0]
	for _, m := range msgs {
		if p.tracker.delivered(m.AckID.(*ackToken).offset) {
			fresh = append(fresh, m)
		}
	}
	p.mu.Unlock()
	if len(fresh) == 0 {
		return
	}
	s.qMu.Lock()
	s.q = append(s.q, fresh...)
	s.wakeLocked()
	s.qMu.Unlock()
}

// waitRoom blocks while the queue is full; false when ctx ended.
func (s *subscription) waitRoom(ctx context.Context) bool {
	s.qMu.Lock()
	for len(s.q)-s.qHead >= s.qCap {
		s.roomWait = true
		room := s.room
		s.qMu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return false
		}
		s.qMu.Lock()
	}
	s.qMu.Unlock()
	return ctx.Err() == nil
}

// wakeLocked wakes a waiting ReceiveBatch. qMu is held.
func (s *subscription) wakeLocked() {
	if s.qWaiting {
		s.qWaiting = false
		select {
		case s.qWake <- struct{}{}:
		default:
		}
	}
}

// roomLocked wakes the fetchers waiting for room if there is some. qMu is
// held.
func (s *subscription) roomLocked() {
	if s.roomWait && len(s.q)-s.qHead < s.qCap {
		s.roomWait = false
		close(s.room)
		s.room = make(chan struct{})
	}
}

// record is a fetched message and its first delivery's ack token.
type record struct {
	msg driver.Message
	tok ackToken
}

func fillDriver(dm *driver.Message, m *kafkago.Message) {
	*dm = driver.Message{Payload: m.Value, Topic: m.Topic, PublishedAt: m.Time, Attempt: 1}
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
}

// ReceiveBatch implements driver.Subscription: redeliveries first, then
// new messages, up to max, blocking until at least one.
func (s *subscription) ReceiveBatch(ctx context.Context, max int) ([]*driver.Message, error) {
	for {
		s.qMu.Lock()
		n := min(len(s.redo)+len(s.q)-s.qHead, max)
		if n > 0 {
			batch := make([]*driver.Message, 0, n)
			r := min(len(s.redo), n)
			batch = append(batch, s.redo[:r]...)
			clear(s.redo[:r])
			s.redo = s.redo[r:]
			if len(s.redo) == 0 {
				s.redo = nil
			}
			k := n - r
			batch = append(batch, s.q[s.qHead:s.qHead+k]...)
			clear(s.q[s.qHead : s.qHead+k])
			s.qHead += k
			if s.qHead == len(s.q) {
				s.q, s.qHead = s.q[:0], 0
			} else if s.qHead >= len(s.q)/2 {
				m := copy(s.q, s.q[s.qHead:])
				clear(s.q[m:])
				s.q, s.qHead = s.q[:m], 0
			}
			s.roomLocked()
			s.qMu.Unlock()
			return batch, nil
		}
		s.qWaiting = true
		s.qMu.Unlock()
		select {
		case <-s.qWake:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.ctx.Done():
			return nil, fmt.Errorf("kafka: receive from %q: %w", s.topic, driver.ErrClosed)
		}
	}
}

// SendAcks implements driver.Subscription: each ack lets its partition's
// commit advance past it once every earlier delivery was acked too.
func (s *subscription) SendAcks(ctx context.Context, ids []driver.AckID) error {
	for _, id := range ids {
		if err := s.AckInline(id); err != nil {
			return err
		}
	}
	return nil
}

// AckInline implements driver.InlineAcker: an ack only marks the offset in
// its partition's tracker (the commit loop sends it later), so the portable
// layer calls it directly from Delivery.Ack.
func (s *subscription) AckInline(id driver.AckID) error {
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
	s.qMu.Lock()
	s.redo = append(s.redo, &cp)
	s.wakeLocked()
	s.qMu.Unlock()
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
