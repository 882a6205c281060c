package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/omnibusmq/omnibus/internal/backoff"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// ackID identifies one claim of one row: the row's seq and the attempt the
// claim set. A later claim of the same row has a higher attempt, so a late
// ack or nack of an expired claim never touches the newer delivery.
type ackID struct {
	seq     int64
	attempt int32
}

type held struct {
	attempt int32
	key     string
	parked  bool // claimed, not handed out yet (its lane's turn has not come)
}

// lane is one key's claims, with key ordering: the message handed out (not
// yet acked or nacked), and the ones claimed behind it, in seq order.
// Nothing of a key is handed out while its lane has a message out: an ack
// hands out the next parked one at once, a nack gives every parked one back
// to the database in the nack's transaction, where they wait behind the
// nacked message again.
type lane struct {
	out    bool
	parked []*driver.Message
}

// subscription implements driver.Subscription for one (topic, group).
type subscription struct {
	b     *Broker
	topic string
	group string // the group's row name ("anon:<uuid>" when anonymous)
	anon  bool
	id    uuid.UUID // holder of its claims

	wake chan struct{} // buffered(1): a NOTIFY or local wake-up, a parked message handed out, a nack's delay passed

	// claimMu keeps a claim and a nack from overlapping, so that a nack
	// gives back every row its key has parked, including those a claim
	// running meanwhile would have added.
	claimMu sync.Mutex
	// unsure is set when a claim failed: the database may have claimed
	// rows whose answer never arrived. The next claim first gives them
	// back (recoverLost), so that it cannot claim past them.
	unsure atomic.Bool

	mu       sync.Mutex
	inflight map[int64]held // claims not yet acked or nacked (parked ones too)
	lanes    map[string]*lane
	parked   int               // messages parked in lanes
	ready    []*driver.Message // parked messages whose turn came, to hand out
	timers   map[*time.Timer]struct{}
	closed   bool

	stopHB chan struct{}
	hbDone chan struct{}

	// Acks taken by SendAcks, deleted by the ack flusher.
	pendSeqs  []int64
	pendAtts  []int32
	pendKeyed bool
	flushing  []int64       // the acks the flusher is deleting now
	ackWake   chan struct{} // cap 1
	ackStop   chan struct{}
	ackDone   chan struct{}
}

func newSubscription(b *Broker, topic, group string) *subscription {
	s := &subscription{
		b: b, topic: topic, group: group,
		wake:     make(chan struct{}, 1),
		inflight: map[int64]held{},
		lanes:    map[string]*lane{},
		timers:   map[*time.Timer]struct{}{},
		stopHB:   make(chan struct{}),
		hbDone:   make(chan struct{}),
		ackWake:  make(chan struct{}, 1),
		ackStop:  make(chan struct{}),
		ackDone:  make(chan struct{}),
		id:       uuid.New(),
	}
	if group == "" {
		s.anon = true
		s.group = "anon:" + uuid.NewString()
	}
	return s
}

func micros(d time.Duration) int64 { return d.Microseconds() }

// register records the group. For the first named group of a topic it also
// adopts the backlog, under the topic's exclusive advisory lock so that no
// publish is in between.
func (s *subscription) register(ctx context.Context) error {
	b := s.b
	if s.anon {
		batch := &pgx.Batch{}
		// Drop anonymous groups of this topic whose process died.
		batch.Queue(`WITH gone AS (DELETE FROM `+b.groups+` WHERE topic = $1 AND anonymous AND expires_at < now() RETURNING grp)
DELETE FROM `+b.queue+` WHERE topic = $1 AND grp IN (SELECT grp FROM gone)`, s.topic)
		batch.Queue(`INSERT INTO `+b.groups+` (topic, grp, anonymous, expires_at) VALUES ($1, $2, true, now() + $3::bigint * interval '1 microsecond')`,
			s.topic, s.group, micros(s.anonTTL()))
		if err := b.pool.SendBatch(ctx, batch).Close(); err != nil {
			return fmt.Errorf("postgres: subscribe to %q: register anonymous group: %w", s.topic, err)
		}
		return nil
	}
	var exists bool
	err := b.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+b.groups+` WHERE topic = $1 AND grp = $2)`, s.topic, s.group).Scan(&exists)
	if err != nil {
		return fmt.Errorf("postgres: subscribe to %q: look up group %q: %w", s.topic, s.group, err)
	}
	if exists {
		return nil
	}
	err = pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, hashtext($2))`, b.lockClass, s.topic); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO `+b.groups+` (topic, grp) VALUES ($1, $2) ON CONFLICT DO NOTHING`, s.topic, s.group)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		// Backlog rows exist only while the topic has no named group: this
		// is the first one, and it takes them.
		_, err = tx.Exec(ctx, `UPDATE `+b.queue+` SET grp = $2 WHERE topic = $1 AND grp = ''`, s.topic, s.group)
		return err
	})
	if err != nil {
		return fmt.Errorf("postgres: subscribe to %q: register group %q: %w", s.topic, s.group, err)
	}
	return nil
}

func (s *subscription) anonTTL() time.Duration { return 3 * s.b.opts.VisibilityTimeout }

func (s *subscription) start() {
	go s.heartbeat()
	go s.ackFlusher()
}

func (s *subscription) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Retries of acks and nacks. PostgreSQL cancels a transaction to resolve a
// deadlock or a serialization failure (the adapter's own statements take
// their row locks in one order, but a user's transaction on the queue table
// may not): it rolled back, so it is sent again, settleAttempts times in
// all. An ack is also sent again while the database cannot be reached
// (connection refused or lost, server shutting down or starting), until
// the visibility timeout: it is idempotent (a row already deleted, or
// claimed again with another attempt, is not touched), and after that the
// message is redelivered anyway.
const (
	settleAttempts   = 5
	settleBackoff    = 10 * time.Millisecond // the first backoff cap, doubled after each attempt
	settleBackoffMax = time.Second
)

// rolledBack reports an error after which PostgreSQL rolled the whole
// transaction back and sending it again can succeed.
func rolledBack(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

// unreachable reports an error of the connection rather than of the
// statement: the network, or a server that is shutting down or starting.
func unreachable(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
	}
	return strings.HasPrefix(pe.Code, "08") || pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
}

// sendRetrying sends the batch that fill builds as one implicit
// transaction, again while it was rolled back by a deadlock or
// serialization failure (settleAttempts in all) or, with idempotent, while
// the database is unreachable (until the visibility timeout), with backoff.
func (b *Broker) sendRetrying(ctx context.Context, idempotent bool, fill func(*pgx.Batch)) error {
	retry := backoff.Policy{Initial: settleBackoff, Max: settleBackoffMax}
	until := time.Now().Add(b.opts.VisibilityTimeout)
	rolled := 0
	for attempt := 1; ; attempt++ {
		batch := &pgx.Batch{}
		fill(batch)
		err := b.pool.SendBatch(ctx, batch).Close()
		if err == nil {
			return nil
		}
		again := false
		switch {
		case rolledBack(err):
			rolled++
			again = rolled < settleAttempts
		case idempotent && unreachable(err):
			again = time.Now().Add(retry.Cap(attempt)).Before(until)
		}
		if !again {
			if attempt > 1 {
				return fmt.Errorf("after %d attempts: %w", attempt, err)
			}
			return err
		}
		if !retry.Sleep(ctx, attempt) {
			return fmt.Errorf("%w (after %d attempts; last: %w)", ctx.Err(), attempt, err)
		}
	}
}

// ReceiveBatch implements driver.Subscription: it claims up to max ready
// rows of the group, waiting for a NOTIFY, a local wake-up or the poll
// interval while there are none.
func (s *subscription) ReceiveBatch(ctx context.Context, max int) ([]*driver.Message, error) {
	if max <= 0 {
		max = 1
	}
	poll := time.NewTimer(s.b.opts.PollInterval)
	defer poll.Stop()
	for {
		s.mu.Lock()
		closed := s.closed
		var out []*driver.Message
		if n := min(len(s.ready), max); n > 0 && !closed {
			out = append(out, s.ready[:n]...)
			s.ready = append(s.ready[:0], s.ready[n:]...)
			for _, m := range out {
				id := m.AckID.(ackID)
				h := s.inflight[id.seq]
				h.parked = false
				s.inflight[id.seq] = h
			}
		}
		// Parked messages count against max: a hot key cannot make the
		// subscription claim without bound. Claims wait until at most half
		// of max is parked, so that each claims at least half a batch (a
		// claim costs about as much for one row as for a hundred).
		room := max - s.parked
		if s.parked > max/2 {
			room = 0
		}
		s.mu.Unlock()
		if closed {
			return nil, fmt.Errorf("postgres: receive from %q: %w", s.topic, driver.ErrClosed)
		}
		if len(out) > 0 {
			return out, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if room > 0 {
			msgs, err := s.claim(ctx, room)
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				return nil, driver.Transient(fmt.Errorf("postgres: receive from %q (group %q): %w", s.topic, s.group, err))
			}
			if len(msgs) > 0 {
				return msgs, nil
			}
		}
		select {
		case <-s.wake:
		case <-poll.C:
			poll.Reset(s.b.opts.PollInterval)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// claim runs the claim statement. It is not cancelled with ctx: rows the
// database claimed are always returned (the portable layer gives them back
// when its context ended), never left to the visibility timeout.
func (s *subscription) claim(ctx context.Context, max int) ([]*driver.Message, error) {
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if s.unsure.Load() {
		if err := s.recoverLost(qctx); err != nil {
			return nil, err
		}
	}
	rows, err := s.b.pool.Query(qctx, s.b.sqlClaim, s.topic, s.group, max, micros(s.b.opts.VisibilityTimeout), s.id)
	if err != nil {
		s.unsure.Store(true)
		return nil, err
	}
	var out []*driver.Message
	for rows.Next() {
		var (
			seq     int64
			attempt int32
			m       driver.Message
		)
		if err := rows.Scan(&seq, &attempt, &m.ID, &m.Key, &m.Payload, &m.Metadata, &m.PublishedAt); err != nil {
			rows.Close()
			s.unsure.Store(true) // the claim's rows go back before the next claim
			return nil, err
		}
		m.Topic = s.topic
		m.Attempt = int(attempt)
		m.AckID = ackID{seq: seq, attempt: attempt}
		out = append(out, &m)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		// The rows read so far, and any the answer did not bring, are
		// given back before the next claim.
		s.unsure.Store(true)
		return nil, err
	}
	slices.SortFunc(out, func(a, b *driver.Message) int {
		return int(a.AckID.(ackID).seq - b.AckID.(ackID).seq)
	})
	ordered := !s.b.opts.DisableKeyOrdering
	give := out[:0]
	s.mu.Lock()
	for _, m := range out {
		id := m.AckID.(ackID)
		h := held{attempt: id.attempt, key: m.Key}
		if prev, ok := s.inflight[id.seq]; ok {
			// Our own claim expired (no heartbeat got through for a
			// visibility timeout) and we claimed the row again: the new
			// claim takes the old one's place. A settle of the old one no
			// longer matches and is ignored.
			h.parked = prev.parked
			if prev.parked {
				s.replaceParked(m)
			}
			s.inflight[id.seq] = h
			if !h.parked {
				give = append(give, m)
			}
			continue
		}
		if ordered && m.Key != "" {
			l := s.lanes[m.Key]
			if l == nil {
				l = &lane{}
				s.lanes[m.Key] = l
			}
			if l.out {
				h.parked = true
				l.parked = append(l.parked, m)
				s.parked++
			} else {
				l.out = true
			}
		}
		s.inflight[id.seq] = h
		if !h.parked {
			give = append(give, m)
		}
	}
	s.mu.Unlock()
	return give, nil
}

// recoverLost gives back the rows the subscription holds in the database
// but does not know: those of a claim that failed after the database ran
// it. It knows its claims in flight (parked ones too) and the acks not yet
// deleted. claimMu must be held, so no claim or nack runs meanwhile.
func (s *subscription) recoverLost(ctx context.Context) error {
	s.mu.Lock()
	known := make([]int64, 0, len(s.inflight)+len(s.pendSeqs)+len(s.flushing))
	for seq := range s.inflight {
		known = append(known, seq)
	}
	known = append(known, s.pendSeqs...)
	known = append(known, s.flushing...)
	s.mu.Unlock()
	if _, err := s.b.pool.Exec(ctx, s.b.sqlRecover, s.topic, s.group, s.id, known); err != nil {
		return fmt.Errorf("give back the claims of a failed claim: %w", err)
	}
	s.unsure.Store(false)
	return nil
}

// replaceParked puts m in the place of the parked (or ready) message with
// the same seq. s.mu must be held.
func (s *subscription) replaceParked(m *driver.Message) {
	seq := m.AckID.(ackID).seq
	if l := s.lanes[m.Key]; l != nil {
		for i, p := range l.parked {
			if p.AckID.(ackID).seq == seq {
				l.parked[i] = m
				return
			}
		}
	}
	for i, p := range s.ready {
		if p.AckID.(ackID).seq == seq {
			s.ready[i] = m
			return
		}
	}
}

func splitMsgs(msgs []*driver.Message) ([]int64, []int32, error) {
	ids := make([]driver.AckID, len(msgs))
	for i, m := range msgs {
		ids[i] = m.AckID
	}
	return splitIDs(ids)
}

func splitIDs(ids []driver.AckID) ([]int64, []int32, error) {
	seqs := make([]int64, 0, len(ids))
	atts := make([]int32, 0, len(ids))
	for _, id := range ids {
		a, ok := id.(ackID)
		if !ok {
			return nil, nil, fmt.Errorf("postgres: ack id %v (%T) is not from this adapter: %w", id, id, driver.ErrInvalid)
		}
		seqs = append(seqs, a.seq)
		atts = append(atts, a.attempt)
	}
	return seqs, atts, nil
}

// settled stops holding the given claims (handed out, acked or nacked) and
// ends their turn in their key's lane. After an ack (next) the lane's next
// parked message is handed out; after a nack (!next) every parked message
// of the lane is returned, to be given back. It reports whether any claim
// had a key and whether a parked message became ready.
func (s *subscription) settled(seqs []int64, atts []int32, next bool) (keyed, woke bool, back []*driver.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.settledLocked(seqs, atts, next)
}

// settledLocked is settled with s.mu held.
func (s *subscription) settledLocked(seqs []int64, atts []int32, next bool) (keyed, woke bool, back []*driver.Message) {
	for i, seq := range seqs {
		h, ok := s.inflight[seq]
		if !ok || h.attempt != atts[i] || h.parked {
			continue
		}
		delete(s.inflight, seq)
		if h.key == "" {
			continue
		}
		keyed = true
		l := s.lanes[h.key]
		if l == nil {
			continue
		}
		if next && len(l.parked) > 0 {
			m := l.parked[0]
			l.parked = l.parked[1:]
			s.parked--
			s.ready = append(s.ready, m)
			woke = true
			continue
		}
		for _, m := range l.parked {
			delete(s.inflight, m.AckID.(ackID).seq)
		}
		back = append(back, l.parked...)
		s.parked -= len(l.parked)
		delete(s.lanes, h.key)
	}
	return keyed, woke, back
}

// SendAcks implements driver.Subscription (with Traits.InlineAcks, the
// portable layer calls it from Delivery.Ack): an ack is local bookkeeping
// (the claim leaves the heartbeat; its key's next parked message is handed
// out at once) plus a delete that the ack flusher sends, batched with the
// acks that come meanwhile. So a key's next message does not wait for the
// previous ack's round trip, and acks do not wait for each other.
func (s *subscription) SendAcks(ctx context.Context, ids []driver.AckID) error {
	seqs, atts, err := splitIDs(ids)
	if err != nil {
		return err
	}
	s.mu.Lock()
	keyed, woke, _ := s.settledLocked(seqs, atts, true)
	s.pendSeqs = append(s.pendSeqs, seqs...)
	s.pendAtts = append(s.pendAtts, atts...)
	s.pendKeyed = s.pendKeyed || keyed
	s.mu.Unlock()
	if woke {
		s.poke()
	}
	select {
	case s.ackWake <- struct{}{}:
	default:
	}
	return nil
}

// ackFlusher deletes the inline acks, all that are pending in one
// statement, until Close, which has it send the last ones.
func (s *subscription) ackFlusher() {
	defer close(s.ackDone)
	for {
		select {
		case <-s.ackWake:
			s.flushAcks()
		case <-s.ackStop:
			s.flushAcks()
			return
		}
	}
}

func (s *subscription) flushAcks() {
	s.mu.Lock()
	seqs, atts, keyed := s.pendSeqs, s.pendAtts, s.pendKeyed
	s.pendSeqs, s.pendAtts, s.pendKeyed = nil, nil, false
	s.flushing = seqs
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.flushing = nil
		s.mu.Unlock()
	}()
	if len(seqs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.b.opts.VisibilityTimeout+10*time.Second)
	defer cancel()
	if err := s.deleteAcked(ctx, seqs, atts, keyed); err != nil {
		s.b.log.Error("omnibus: postgres ack failed; the messages will be redelivered after the visibility timeout",
			"topic", s.topic, "group", s.group, "count", len(seqs), "error", err)
	}
}

// deleteAcked deletes exactly the acked claims (seq, attempt), sent again
// while rolled back or unreachable (sendRetrying), and then wakes the
// group's members when a key's next message may now be claimable.
func (s *subscription) deleteAcked(ctx context.Context, seqs []int64, atts []int32, keyed bool) error {
	err := s.b.sendRetrying(ctx, true, func(batch *pgx.Batch) {
		batch.Queue(s.b.sqlAck, seqs, atts)
	})
	if err != nil {
		return fmt.Errorf("postgres: ack %d message(s) on %q (group %q): %w", len(seqs), s.topic, s.group, err)
	}
	if keyed && !s.b.opts.DisableKeyOrdering {
		s.b.wake(s.topic)
	}
	return nil
}

// SendNacks implements driver.Subscription: the rows become visible again
// after delay (their attempt is counted on the next claim).
func (s *subscription) SendNacks(ctx context.Context, ids []driver.AckID, delay time.Duration) error {
	seqs, atts, err := splitIDs(ids)
	if err != nil {
		return err
	}
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	_, _, back := s.settled(seqs, atts, false)
	bseqs, batts, _ := splitMsgs(back)
	// One transaction: the parked rows become visible again together with
	// (and behind) the nacked one. If it fails, they all come back after
	// the visibility timeout, in order.
	err = s.b.sendRetrying(ctx, false, func(batch *pgx.Batch) {
		batch.Queue(s.b.sqlNack, seqs, atts, micros(delay))
		if len(back) > 0 {
			batch.Queue(s.b.sqlUnclaim, bseqs, batts)
		}
	})
	if err != nil {
		return fmt.Errorf("postgres: nack %d message(s) on %q (group %q): %w", len(ids), s.topic, s.group, err)
	}
	if delay <= 0 || len(back) > 0 {
		s.b.wake(s.topic)
	}
	if delay <= 0 {
		return nil
	}
	s.mu.Lock()
	if !s.closed {
		var tm *time.Timer
		tm = time.AfterFunc(delay, func() {
			s.mu.Lock()
			delete(s.timers, tm)
			s.mu.Unlock()
			s.poke()
		})
		s.timers[tm] = struct{}{}
	}
	s.mu.Unlock()
	return nil
}

// heartbeat extends the visibility of every held claim (and the lease of an
// anonymous group) every VisibilityTimeout/3 until Close.
func (s *subscription) heartbeat() {
	defer close(s.hbDone)
	every := s.b.opts.VisibilityTimeout / 3
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stopHB:
			return
		case <-t.C:
		}
		// The claims the previous heartbeat extended expire two periods
		// from now: a slow heartbeat (a loaded server) still counts until
		// then.
		ctx, cancel := context.WithTimeout(context.Background(), 2*every)
		n, err := s.extendHeld(ctx)
		cancel()
		if err != nil {
			s.b.log.Warn("omnibus: postgres heartbeat failed; held messages may be redelivered to other members",
				"topic", s.topic, "group", s.group, "held", n, "error", err)
		}
	}
}

// extendHeld is one heartbeat: it pushes the visibility of every held claim
// (and the lease of an anonymous group) VisibilityTimeout into the future.
// It returns how many claims it extended.
func (s *subscription) extendHeld(ctx context.Context) (int, error) {
	s.mu.Lock()
	seqs := make([]int64, 0, len(s.inflight))
	atts := make([]int32, 0, len(s.inflight))
	for seq, h := range s.inflight {
		seqs = append(seqs, seq)
		atts = append(atts, h.attempt)
	}
	s.mu.Unlock()
	if len(seqs) == 0 && !s.anon {
		return 0, nil
	}
	batch := &pgx.Batch{}
	if len(seqs) > 0 {
		batch.Queue(s.b.sqlExtend, seqs, atts, micros(s.b.opts.VisibilityTimeout))
	}
	if s.anon {
		batch.Queue(`UPDATE `+s.b.groups+` SET expires_at = now() + $3::bigint * interval '1 microsecond' WHERE topic = $1 AND grp = $2`,
			s.topic, s.group, micros(s.anonTTL()))
	}
	return len(seqs), s.b.pool.SendBatch(ctx, batch).Close()
}

// Close implements driver.Subscription: it stops the heartbeat and makes
// every claim not yet acked visible again at once (acks the portable layer
// flushed before Close are already deleted); an anonymous group is deleted
// with its rows.
func (s *subscription) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for tm := range s.timers {
		tm.Stop()
	}
	s.timers = nil
	var seqs, pseqs []int64
	var atts, patts []int32
	for seq, h := range s.inflight {
		if h.parked {
			pseqs = append(pseqs, seq)
			patts = append(patts, h.attempt)
		} else {
			seqs = append(seqs, seq)
			atts = append(atts, h.attempt)
		}
	}
	s.inflight = map[int64]held{}
	s.lanes, s.ready, s.parked = map[string]*lane{}, nil, 0
	s.mu.Unlock()
	close(s.stopHB)
	<-s.hbDone
	close(s.ackStop) // the inline acks taken before Close are deleted now
	<-s.ackDone
	s.b.forget(s)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	batch := &pgx.Batch{}
	if s.anon {
		batch.Queue(`DELETE FROM `+s.b.groups+` WHERE topic = $1 AND grp = $2`, s.topic, s.group)
		batch.Queue(`DELETE FROM `+s.b.queue+` WHERE topic = $1 AND grp = $2`, s.topic, s.group)
	} else {
		if len(seqs) > 0 {
			batch.Queue(s.b.sqlRelease, seqs, atts)
		}
		if len(pseqs) > 0 {
			batch.Queue(s.b.sqlUnclaim, pseqs, patts)
		}
		if s.unsure.Load() {
			// The rows of a failed claim, too: after the statements above
			// every row it still holds is one (an empty list, not nil:
			// NULL would match no row).
			batch.Queue(s.b.sqlRecover, s.topic, s.group, s.id, []int64{})
		}
	}
	if batch.Len() == 0 {
		return nil
	}
	if err := s.b.pool.SendBatch(ctx, batch).Close(); err != nil {
		if s.anon {
			return fmt.Errorf("postgres: close anonymous subscription to %q: delete its group (it expires by itself): %w", s.topic, err)
		}
		return fmt.Errorf("postgres: close subscription to %q (group %q): release %d unacked message(s) (they are redelivered after the visibility timeout): %w",
			s.topic, s.group, len(seqs), err)
	}
	if !s.anon {
		s.b.wake(s.topic)
	}
	return nil
}

func encodeMeta(md map[string]string) (string, error) {
	for k, v := range md {
		if !validText(k) {
			return "", fmt.Errorf("metadata key %q is not valid UTF-8 or contains NUL: %w", k, driver.ErrInvalid)
		}
		if !validText(v) {
			return "", fmt.Errorf("metadata[%q] = %q is not valid UTF-8 or contains NUL: %w", k, v, driver.ErrInvalid)
		}
	}
	js, err := json.Marshal(md)
	if err != nil {
		return "", fmt.Errorf("encode metadata: %w", err)
	}
	return string(js), nil
}
