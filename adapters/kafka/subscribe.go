package kafka

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/omnibusmq/omnibus/internal/backoff"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// subscription is one driver.Subscription: a consumer-group member (group
// != "") or a direct reader of every partition (group == ""), on a franz-go
// client of its own.
type subscription struct {
	b          *Broker
	topic      string
	group      string
	fromOldest bool
	cl         *kgo.Client

	mu     sync.Mutex
	parts  map[int32]*partition // this member's partitions now
	redo   []*driver.Message    // nacked, due for redelivery
	wake   context.CancelFunc   // ends a PollRecords in progress
	closed bool
	batch  []*driver.Message // reused by ReceiveBatch
	msgs   []driver.Message  // reused by take: the portable layer copies what it keeps

	ready     chan struct{} // closed after the first assignment
	readyOnce sync.Once
	readyErr  error

	stop      chan struct{} // ends the commit loop
	loops     sync.WaitGroup
	closeOnce sync.Once
}

// partition is this member's hold on one partition for one assignment.
// Its lease is revoked when the assignment ends; acks of an earlier
// assignment never touch a later one.
type partition struct {
	id    int32
	lease *driver.Lease // nil for a group-less subscription

	mu        sync.Mutex
	tracker   *offsetTracker
	committed int64 // last offset committed to the group (-1: unknown)
}

// ackToken is the AckID of one delivery: the fetched record (to deliver it
// again after a nack) and where it is.
type ackToken struct {
	p       *partition
	offset  int64
	rec     *kgo.Record
	attempt int
}

// OpenSubscription implements driver.Broker. With a group it joins the
// consumer group and returns once the first assignment is running, start
// offsets resolved and committed; without one it reads every partition
// directly from its current end (or start).
func (b *Broker) OpenSubscription(ctx context.Context, topic string, opts driver.SubscriptionOptions) (driver.Subscription, error) {
	if err := b.enter(); err != nil {
		return nil, fmt.Errorf("kafka: subscribe to %q: %w", topic, err)
	}
	defer b.pending.Done()
	if err := b.ensureTopic(ctx, topic); err != nil {
		return nil, err
	}
	s := &subscription{
		b: b, topic: topic, group: opts.Group,
		fromOldest: opts.StartFromOldest || b.opts.StartFromOldest,
		parts:      map[int32]*partition{},
		ready:      make(chan struct{}),
		stop:       make(chan struct{}),
	}
	copts := append(b.clientOpts(),
		kgo.FetchMaxPartitionBytes(int32(max(b.opts.FetchMaxBytes, b.maxRecord+recordReserve))),
		kgo.FetchMaxBytes(int32(max(50<<20, b.opts.FetchMaxBytes, b.maxRecord+recordReserve))),
		kgo.FetchMaxWait(time.Second),
	)
	if s.group == "" {
		offs, err := b.resolveOffsets(ctx, topic, s.fromOldest)
		if err != nil {
			return nil, err
		}
		at := map[int32]kgo.Offset{}
		for id, o := range offs {
			s.parts[id] = &partition{id: id, tracker: newOffsetTracker(o), committed: -1}
			at[id] = kgo.NewOffset().At(o)
		}
		copts = append(copts, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: at}))
		if s.cl, err = kgo.NewClient(copts...); err != nil {
			return nil, fmt.Errorf("kafka: subscribe to %q: %v: %w", topic, err, driver.ErrInvalid)
		}
		return s, nil
	}
	bal, _ := groupBalancer(b.opts.Balancer)
	reset := kgo.NewOffset().AtEnd()
	if s.fromOldest {
		reset = kgo.NewOffset().AtStart()
	}
	copts = append(copts,
		kgo.ConsumerGroup(s.group),
		kgo.ConsumeTopics(topic),
		kgo.Balancers(bal),
		kgo.SessionTimeout(b.opts.SessionTimeout),
		kgo.HeartbeatInterval(b.opts.HeartbeatInterval),
		kgo.RebalanceTimeout(b.opts.RebalanceTimeout),
		kgo.DisableAutoCommit(),
		kgo.ConsumeResetOffset(reset),
		kgo.OnPartitionsAssigned(s.assigned),
		kgo.OnPartitionsRevoked(s.revoked),
		kgo.OnPartitionsLost(s.lost),
	)
	var err error
	if s.cl, err = kgo.NewClient(copts...); err != nil {
		return nil, fmt.Errorf("kafka: join group %q on topic %q: %v: %w", s.group, topic, err, driver.ErrInvalid)
	}
	s.loops.Add(1)
	go s.commitLoop()
	limit := max(30*time.Second, 2*b.opts.RebalanceTimeout)
	t := time.NewTimer(limit)
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
		return nil, fmt.Errorf("kafka: join group %q on topic %q: no assignment within %v", s.group, topic, limit)
	}
}

func (s *subscription) markReady(err error) {
	s.readyOnce.Do(func() {
		s.readyErr = err
		close(s.ready)
	})
}

// assigned runs when the group gives this member partitions, before
// franz-go fetches their committed offsets: a partition with no committed
// offset gets its start (start= or FromOldest) resolved and committed at
// once, so that the next owner after a rebalance starts there too and
// never skips what was published meanwhile.
func (s *subscription) assigned(ctx context.Context, cl *kgo.Client, m map[string][]int32) {
	defer s.markReady(nil)
	ids := m[s.topic]
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, s.b.opts.WriteTimeout)
	defer cancel()
	start, err := s.startOffsets(ctx, cl, ids)
	if err != nil {
		s.b.log.Warn("omnibus: kafka: could not resolve and commit the start offsets of new partitions; a rebalance before the first commit may start them at start= again",
			"topic", s.topic, "group", s.group, "partitions", ids, "error", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		o, ok := start[id]
		if !ok {
			o = -1 // unknown: the tracker starts at the first delivery
		}
		s.parts[id] = &partition{id: id, lease: &driver.Lease{}, tracker: newOffsetTracker(o), committed: o}
	}
	s.b.log.Debug("omnibus: kafka: assigned", "topic", s.topic, "group", s.group, "partitions", ids)
}

// startOffsets returns where each of ids starts for this group: its
// committed offset, or for a partition without one the resolved start,
// which it commits.
func (s *subscription) startOffsets(ctx context.Context, cl *kgo.Client, ids []int32) (map[int32]int64, error) {
	committed, err := s.b.adm.FetchOffsets(ctx, s.group)
	if err != nil {
		return nil, fmt.Errorf("fetch committed offsets: %w", err)
	}
	out := map[int32]int64{}
	var missing []int32
	for _, id := range ids {
		if o, ok := committed.Lookup(s.topic, id); ok && o.Err == nil && o.At >= 0 {
			out[id] = o.At
		} else {
			missing = append(missing, id)
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	if !s.fromOldest {
		// A new group (or new partitions) starts at the newest offset:
		// say so, since what was published before is never delivered to
		// it (a renamed handler's group is a new group).
		s.b.log.Warn("omnibus: kafka: group has no committed position on these partitions; it starts at the newest offset and skips what was published before (start=earliest or pubsub.FromOldest() to read from the oldest)",
			"topic", s.topic, "group", s.group, "partitions", missing)
	}
	resolved, err := s.b.resolveOffsets(ctx, s.topic, s.fromOldest)
	if err != nil {
		return out, err
	}
	commit := map[int32]kgo.EpochOffset{}
	for _, id := range missing {
		if o, ok := resolved[id]; ok {
			commit[id] = kgo.EpochOffset{Epoch: -1, Offset: o}
		}
	}
	if err := commitSync(ctx, cl, s.topic, commit); err != nil {
		return out, fmt.Errorf("commit start offsets: %w", err)
	}
	for id, eo := range commit {
		out[id] = eo.Offset
	}
	return out, nil
}

// revoked runs when the group takes partitions away (a rebalance, or
// leaving the group on Close): their leases are revoked first, so that
// nothing buffered from them is handed out and their acks fail, then what
// was acked is committed for their next owner.
func (s *subscription) revoked(ctx context.Context, cl *kgo.Client, m map[string][]int32) {
	gone := s.revoke(m[s.topic])
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.b.opts.WriteTimeout)
	defer cancel()
	if err := s.commit(ctx, gone); err != nil {
		s.b.log.Warn("omnibus: kafka: commit on revocation failed; the next owner redelivers what was acked since the last commit",
			"topic", s.topic, "group", s.group, "error", err)
	}
}

// lost runs when the member lost its partitions without a clean
// rebalance (session expired, fenced): the leases are revoked; a commit
// would be refused.
func (s *subscription) lost(_ context.Context, _ *kgo.Client, m map[string][]int32) {
	if gone := s.revoke(m[s.topic]); len(gone) > 0 {
		s.b.log.Warn("omnibus: kafka: partitions lost (session expired or fenced); their unacknowledged deliveries go to the next owner",
			"topic", s.topic, "group", s.group, "partitions", m[s.topic])
	}
}

// revoke ends this member's hold on ids and returns their partitions.
func (s *subscription) revoke(ids []int32) []*partition {
	s.mu.Lock()
	defer s.mu.Unlock()
	var gone []*partition
	for _, id := range ids {
		p := s.parts[id]
		if p == nil {
			continue
		}
		// Under p.mu: once revoked, no ack reaches the tracker, so the
		// commit that follows is the partition's last.
		p.mu.Lock()
		p.lease.Revoke()
		p.mu.Unlock()
		delete(s.parts, id)
		gone = append(gone, p)
	}
	if len(gone) > 0 {
		redo := s.redo[:0]
		for _, m := range s.redo {
			if !m.Lease.Revoked() {
				redo = append(redo, m)
			}
		}
		clear(s.redo[len(redo):])
		s.redo = redo
	}
	return gone
}

// commitLoop commits acked offsets every CommitInterval until Close.
func (s *subscription) commitLoop() {
	defer s.loops.Done()
	t := time.NewTicker(s.b.opts.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.b.opts.WriteTimeout)
		if err := s.commit(ctx, s.owned()); err != nil {
			s.b.log.Debug("omnibus: kafka: commit failed; retrying at the next interval", "topic", s.topic, "group", s.group, "error", err)
		}
		cancel()
	}
}

func (s *subscription) owned() []*partition {
	s.mu.Lock()
	defer s.mu.Unlock()
	ps := make([]*partition, 0, len(s.parts))
	for _, p := range s.parts {
		ps = append(ps, p)
	}
	return ps
}

// commit commits, for each of ps, one past its highest contiguous acked
// offset when that moved since the last commit.
func (s *subscription) commit(ctx context.Context, ps []*partition) error {
	offs := map[int32]kgo.EpochOffset{}
	for _, p := range ps {
		p.mu.Lock()
		if c := p.tracker.committable(); c > p.committed {
			offs[p.id] = kgo.EpochOffset{Epoch: -1, Offset: c}
		}
		p.mu.Unlock()
	}
	if len(offs) == 0 {
		return nil
	}
	if err := commitSync(ctx, s.cl, s.topic, offs); err != nil {
		return err
	}
	for _, p := range ps {
		if eo, ok := offs[p.id]; ok {
			p.mu.Lock()
			p.committed = max(p.committed, eo.Offset)
			p.mu.Unlock()
		}
	}
	return nil
}

// commitSync commits offs of topic in the member's current generation and
// returns the first error of the request or of a partition.
func commitSync(ctx context.Context, cl *kgo.Client, topic string, offs map[int32]kgo.EpochOffset) error {
	if len(offs) == 0 {
		return nil
	}
	var cerr error
	cl.CommitOffsetsSync(ctx, map[string]map[int32]kgo.EpochOffset{topic: offs},
		func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
			if err != nil {
				cerr = err
				return
			}
			for _, t := range resp.Topics {
				for _, p := range t.Partitions {
					if err := kerr.ErrorForCode(p.ErrorCode); err != nil && cerr == nil {
						cerr = fmt.Errorf("partition %d: %w", p.Partition, err)
					}
				}
			}
		})
	return cerr
}

// resolveOffsets returns the first (oldest) or next-to-be-written offset of
// every partition of topic, retrying transient errors (a partition whose
// leader is still being elected) until ctx ends.
func (b *Broker) resolveOffsets(ctx context.Context, topic string, oldest bool) (map[int32]int64, error) {
	retry := backoff.Policy{Initial: 20 * time.Millisecond, Max: time.Second}
	for failures := 1; ; failures++ {
		var lo kadm.ListedOffsets
		var err error
		if oldest {
			lo, err = b.adm.ListStartOffsets(ctx, topic)
		} else {
			lo, err = b.adm.ListEndOffsets(ctx, topic)
		}
		if err == nil {
			err = lo.Error()
		}
		if err == nil {
			out := map[int32]int64{}
			lo.Each(func(o kadm.ListedOffset) {
				if o.Topic == topic && o.Partition >= 0 {
					out[o.Partition] = o.Offset
				}
			})
			if len(out) > 0 {
				return out, nil
			}
			err = kerr.UnknownTopicOrPartition
		}
		if !kerr.IsRetriable(err) && !errors.Is(err, kerr.UnknownTopicOrPartition) {
			return nil, fmt.Errorf("kafka: list offsets of %q: %w", topic, classify(err))
		}
		if !retry.Sleep(ctx, failures) {
			return nil, fmt.Errorf("kafka: list offsets of %q: %v: %w", topic, err, ctx.Err())
		}
	}
}

func fillDriver(dm *driver.Message, r *kgo.Record) {
	*dm = driver.Message{Payload: r.Value, Topic: r.Topic, PublishedAt: r.Timestamp, Attempt: 1}
	if len(r.Key) > 0 {
		dm.Key = string(r.Key)
	}
	for _, h := range r.Headers {
		if h.Key == HeaderID {
			dm.ID = string(h.Value)
			continue
		}
		if dm.Metadata == nil {
			dm.Metadata = make(map[string]string, len(r.Headers))
		}
		dm.Metadata[h.Key] = string(h.Value)
	}
	if dm.ID == "" {
		// Written by a non-omnibus producer: the position is a stable ID.
		dm.ID = r.Topic + "/" + strconv.Itoa(int(r.Partition)) + "/" + strconv.FormatInt(r.Offset, 10)
	}
}

// ReceiveBatch implements driver.Subscription: redeliveries first, then
// what franz-go fetched, up to max, blocking until at least one. Records
// of a partition this member no longer owns, or already delivered in this
// assignment, are dropped.
func (s *subscription) ReceiveBatch(ctx context.Context, max int) ([]*driver.Message, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, fmt.Errorf("kafka: receive from %q: %w", s.topic, driver.ErrClosed)
		}
		batch := s.batch[:0]
		n := 0
		for ; n < len(s.redo) && len(batch) < max; n++ {
			if m := s.redo[n]; !m.Lease.Revoked() {
				batch = append(batch, m)
			}
		}
		if n > 0 {
			clear(s.redo[:n])
			s.redo = s.redo[n:]
			if len(s.redo) == 0 {
				s.redo = nil
			}
		}
		if len(batch) > 0 {
			s.batch = batch
			s.mu.Unlock()
			return batch, nil
		}
		pctx, wake := context.WithCancel(ctx)
		s.wake = wake
		s.mu.Unlock()

		fs := s.cl.PollRecords(pctx, max)

		s.mu.Lock()
		s.wake = nil
		s.mu.Unlock()
		wake()
		if fs.IsClientClosed() {
			return nil, fmt.Errorf("kafka: receive from %q: %w", s.topic, driver.ErrClosed)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		fs.EachError(func(topic string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				s.b.log.Warn("omnibus: kafka: fetch failed; franz-go retries", "topic", topic, "partition", p, "error", err)
			}
		})
		batch = s.take(fs, batch)
		s.batch = batch
		if len(batch) > 0 {
			return batch, nil
		}
	}
}

// take converts the fetched records of partitions this member still owns.
func (s *subscription) take(fs kgo.Fetches, batch []*driver.Message) []*driver.Message {
	// The messages of the last batch are free again (see
	// driver.Subscription.ReceiveBatch); with room for every fetched record
	// the appends below never move them.
	if n := fs.NumRecords(); cap(s.msgs) < n {
		s.msgs = make([]driver.Message, 0, n)
	}
	msgs := s.msgs[:0]
	fs.EachPartition(func(ftp kgo.FetchTopicPartition) {
		if len(ftp.Records) == 0 {
			return
		}
		s.mu.Lock()
		p := s.parts[ftp.Partition]
		s.mu.Unlock()
		if p == nil {
			return // revoked since the fetch: the next owner delivers it
		}
		toks := make([]ackToken, len(ftp.Records))
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.lease.Revoked() {
			return
		}
		for i, r := range ftp.Records {
			if !p.tracker.delivered(r.Offset) {
				continue
			}
			t := &toks[i]
			*t = ackToken{p: p, offset: r.Offset, rec: r, attempt: 1}
			msgs = append(msgs, driver.Message{})
			dm := &msgs[len(msgs)-1]
			fillDriver(dm, r)
			dm.Lease, dm.AckID = p.lease, t
			batch = append(batch, dm)
		}
	})
	return batch
}

// SendAcks implements driver.Subscription: each ack lets its partition's
// commit advance past it once every earlier delivery was acked too. An ack
// only marks the offset in its partition's tracker (the commit loop sends
// it later), so the portable layer calls it directly from Delivery.Ack
// (Traits.InlineAcks). An ack of a delivery whose partition was revoked is
// an ErrRevoked error.
func (s *subscription) SendAcks(ctx context.Context, ids []driver.AckID) error {
	var first error
	for _, id := range ids {
		if err := s.ack(id); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (s *subscription) ack(id driver.AckID) error {
	t, ok := id.(*ackToken)
	if !ok {
		return fmt.Errorf("kafka: ack: foreign ack ID %T: %w", id, driver.ErrInvalid)
	}
	p := t.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.lease.Revoked() {
		return fmt.Errorf("kafka: ack of %q partition %d offset %d: %w", s.topic, p.id, t.offset, driver.ErrRevoked)
	}
	p.tracker.ack(t.offset)
	return nil
}

// SendNacks implements driver.Subscription: the message is redelivered in
// process after delay and holds its partition's commit back until acked.
// A nack of a revoked partition's delivery needs nothing: its next owner
// delivers it again.
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
	if t.p.lease.Revoked() {
		return
	}
	nt := &ackToken{p: t.p, offset: t.offset, rec: t.rec, attempt: t.attempt + 1}
	var cp driver.Message
	fillDriver(&cp, t.rec)
	cp.Lease, cp.AckID, cp.Attempt = t.p.lease, nt, nt.attempt
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return // the next member starts at the committed offset
	}
	s.redo = append(s.redo, &cp)
	if s.wake != nil {
		s.wake()
	}
}

// Close implements driver.Subscription: it commits every contiguous acked
// offset and leaves the group (revoking every lease); whatever was not
// acked is delivered again to the group's next owner of its partition.
func (s *subscription) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		if s.wake != nil {
			s.wake()
		}
		s.mu.Unlock()
		close(s.stop)
		s.loops.Wait()
		if s.group != "" {
			ctx, cancel := context.WithTimeout(context.Background(), s.b.opts.WriteTimeout)
			if err := s.commit(ctx, s.owned()); err != nil {
				s.b.log.Warn("omnibus: kafka: commit on close failed; the next owner redelivers what was acked since the last commit",
					"topic", s.topic, "group", s.group, "error", err)
			}
			cancel()
		}
		// Leaves the group: franz-go calls revoked for every partition.
		s.cl.Close()
		s.markReady(fmt.Errorf("kafka: subscription to %q closed: %w", s.topic, driver.ErrClosed))
	})
	return nil
}
