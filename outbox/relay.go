package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/omnibusmq/omnibus/internal/backoff"
	"github.com/omnibusmq/omnibus/internal/wait"
	"github.com/omnibusmq/omnibus/pubsub"
)

// RelayOptions configure a Relay. The zero value is valid: every zero field
// means the default given on it. A negative duration or size is an error
// (pubsub.ErrInvalid) from NewRelay, except where noted.
type RelayOptions struct {
	// BatchSize is the most rows read, published (one client.Publish per
	// topic) and deleted at a time. Default 1000, at most 10000.
	BatchSize int
	// PollInterval is how often the relay looks for rows when nothing woke
	// it and it has no working LISTEN (SQLite, a Postgres driver without
	// LISTEN, or while the listen connection is down and reconnecting); it
	// is also how often a standby relay tries to take the leader lock.
	// Default 100ms.
	PollInterval time.Duration
	// IdlePollInterval is the safety-net poll while LISTEN works. Default 5s.
	IdlePollInterval time.Duration
	// RetryMin and RetryMax bound the exponential backoff (full jitter)
	// after a failed publish or database error. Defaults 50ms and 10s.
	RetryMin, RetryMax time.Duration
	// LagLogInterval is how often the leader logs the backlog (Lag) at
	// Info. Default 1m; negative disables it.
	LagLogInterval time.Duration
	// ErrorLogInterval is how often a failure that lasts (the database or
	// the broker unreachable) is logged again while the relay retries; its
	// start is logged at once. Default 1m.
	ErrorLogInterval time.Duration
	// Logger receives the relay's logs. Default slog.Default().
	Logger *slog.Logger
}

func (o RelayOptions) validate() (RelayOptions, error) {
	bad := func(field string, v any, why string) (RelayOptions, error) {
		return o, fmt.Errorf("outbox: RelayOptions.%s = %v: %s: %w", field, v, why, pubsub.ErrInvalid)
	}
	switch {
	case o.BatchSize < 0 || o.BatchSize > 10000:
		return bad("BatchSize", o.BatchSize, "want 0 (default 1000) to 10000")
	case o.PollInterval < 0:
		return bad("PollInterval", o.PollInterval, "negative")
	case o.IdlePollInterval < 0:
		return bad("IdlePollInterval", o.IdlePollInterval, "negative")
	case o.RetryMin < 0:
		return bad("RetryMin", o.RetryMin, "negative")
	case o.RetryMax < 0:
		return bad("RetryMax", o.RetryMax, "negative")
	case o.ErrorLogInterval < 0:
		return bad("ErrorLogInterval", o.ErrorLogInterval, "negative")
	}
	if o.ErrorLogInterval == 0 {
		o.ErrorLogInterval = time.Minute
	}
	if o.BatchSize == 0 {
		o.BatchSize = 1000
	}
	if o.PollInterval == 0 {
		o.PollInterval = 100 * time.Millisecond
	}
	if o.IdlePollInterval == 0 {
		o.IdlePollInterval = 5 * time.Second
	}
	if o.RetryMin == 0 {
		o.RetryMin = 50 * time.Millisecond
	}
	if o.RetryMax == 0 {
		o.RetryMax = 10 * time.Second
	}
	if o.RetryMax < o.RetryMin {
		return bad("RetryMax", o.RetryMax, fmt.Sprintf("below RetryMin %v", o.RetryMin))
	}
	if o.LagLogInterval == 0 {
		o.LagLogInterval = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// Relay forwards committed outbox rows to a pubsub client.
//
// Promises (see the package documentation for how):
//   - every committed row is published at least once, and deleted only
//     after client.Publish confirmed it; a relay killed at any point loses
//     nothing (the next leader re-sends what was not yet deleted: consumers
//     deduplicate by Message.ID);
//   - rows with the same topic and key are published in relay order
//     ((txid, id) on Postgres, id on SQLite), never overtaking each other,
//     across batches, retries and leader changes (counting first
//     deliveries);
//   - of all relays on one table only the leader (pg_try_advisory_lock)
//     forwards; the others stand by and take over when its connection ends;
//   - a failed publish or database error is logged and retried with backoff,
//     never skipped;
//   - a row that can never be relayed (metadata that is not a JSON object of
//     strings, an invalid topic or message ID, a message the client rejects
//     with pubsub.ErrInvalid) is moved to the quarantine table with the
//     reason and logged at Error; the rows behind it go on.
type Relay struct {
	store  *Store
	client *pubsub.Client
	o      RelayOptions
	log    *slog.Logger

	wake      chan struct{}
	failures  *failureLog
	listening atomic.Bool
	running   atomic.Bool
	leader    atomic.Bool
	forwarded atomic.Int64

	onListen func() // test hook: called each time LISTEN (re)starts
}

// NewRelay returns a relay from store's table to client. It checks opts and
// opens nothing: Run connects.
func NewRelay(store *Store, client *pubsub.Client, opts RelayOptions) (*Relay, error) {
	if store == nil {
		return nil, fmt.Errorf("outbox: NewRelay: store is nil: %w", pubsub.ErrInvalid)
	}
	if client == nil {
		return nil, fmt.Errorf("outbox: NewRelay: client is nil: %w", pubsub.ErrInvalid)
	}
	o, err := opts.validate()
	if err != nil {
		return nil, err
	}
	log := o.Logger.With("component", "outbox.relay", "table", store.Table())
	return &Relay{
		store: store, client: client, o: o, log: log,
		wake:     make(chan struct{}, 1),
		failures: &failureLog{log: log, interval: o.ErrorLogInterval},
	}, nil
}

// Forwarded returns how many rows this relay has published and deleted
// (a row re-sent after a failure counts each time it is deleted: once).
func (r *Relay) Forwarded() int64 { return r.forwarded.Load() }

// Leader reports whether the relay currently holds the leader lock.
func (r *Relay) Leader() bool { return r.leader.Load() }

// Lag reports the store's backlog; see Store.Lag.
func (r *Relay) Lag(ctx context.Context) (Lag, error) { return r.store.Lag(ctx) }

func (r *Relay) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run forwards rows until ctx ends, then returns nil. Database and broker
// failures are retried with backoff, logged when they start and then every
// ErrorLogInterval while they last. Run returns an error when the client is
// closed (wrapping pubsub.ErrClosed), when Run is already running on this
// Relay, and when the database refuses for good — the table or a column is
// missing, authentication fails, the database does not exist, a privilege
// is missing — wrapping pubsub.ErrPermanent and saying which. A batch in flight when ctx ends is not
// deleted and will be sent again by the next leader.
func (r *Relay) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return fmt.Errorf("outbox: relay on table %s: Run is already running", r.store.Table())
	}
	defer r.running.Store(false)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	unsub := subscribeLocal(r.store.w.d, r.store.Table(), r.wake)
	defer unsub()
	if listen := r.store.be.listener(); listen != nil {
		wg.Add(1)
		go func() { defer wg.Done(); r.listenLoop(ctx, listen) }()
	}
	if r.o.LagLogInterval > 0 {
		wg.Add(1)
		go func() { defer wg.Done(); r.lagLoop(ctx) }()
	}

	bo := r.newBackoff()
	for ctx.Err() == nil {
		err := r.lead(ctx, bo)
		if errors.Is(err, pubsub.ErrClosed) {
			return fmt.Errorf("outbox: relay on table %s: %w", r.store.Table(), err)
		}
		if err != nil && ctx.Err() == nil {
			if why := permanentDBError(err); why != "" {
				r.log.Error("outbox relay: stopping: "+why, "error", err)
				return pubsub.Permanent(fmt.Errorf("outbox: relay on table %s: %s: %w", r.store.Table(), why, err))
			}
			d := bo.next()
			r.failures.failed("outbox relay: database error, reconnecting", err, d)
			if !wait.Sleep(ctx, d) {
				break
			}
		}
	}
	return nil
}

// lead opens a session, waits to become leader and forwards until an error
// or ctx ends.
func (r *Relay) lead(ctx context.Context, bo *retries) error {
	s, err := r.store.be.session(ctx)
	if err != nil {
		return fmt.Errorf("open session: %w", err)
	}
	defer s.close()
	defer r.leader.Store(false)
	standby := false
	for {
		ok, err := s.tryLead(ctx)
		if err != nil {
			return fmt.Errorf("try leader lock: %w", err)
		}
		if ok {
			break
		}
		if !standby {
			r.log.Info("outbox relay: another relay leads; standing by")
			standby = true
		}
		if !wait.Sleep(ctx, r.o.PollInterval) {
			return nil
		}
	}
	r.leader.Store(true)
	r.log.Info("outbox relay: leading")

	// eager is a short, growing re-poll delay used while rows are expected
	// soon: after an in-process wake-up (it comes from Publish, before the
	// writer's commit) when there is no LISTEN, and while committed rows are
	// held back by an older transaction that need not be an outbox writer
	// (no NOTIFY will come for it). It stops growing at PollInterval.
	//
	// It starts armed: a Publish in this process may have sent its wake-up
	// before this relay subscribed to them, and committed after the first
	// read below.
	eager, armed := time.Duration(0), true
	for ctx.Err() == nil {
		n, held, err := r.forwardBatch(ctx, s)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var pe *publishError
			if !errors.As(err, &pe) {
				return err // database: new session
			}
			if errors.Is(err, pubsub.ErrClosed) {
				return err
			}
			d := bo.next()
			r.failures.failed("outbox relay: publish failed; rows stay in the outbox", err, d)
			if !wait.Sleep(ctx, d) {
				return nil
			}
			continue
		}
		bo.reset()
		r.failures.ok()
		if n == r.o.BatchSize {
			eager, armed = 0, false
			continue // more may be ready now
		}
		switch {
		case n > 0 && !held:
			eager, armed = 0, false
		case eager > 0 || armed || held:
			armed = false
			if eager = nextEager(eager, r.o.PollInterval); eager >= r.o.PollInterval && !held {
				eager = 0
			}
		}
		wait := r.o.PollInterval
		if r.listening.Load() {
			wait = r.o.IdlePollInterval
		}
		if eager > 0 {
			wait = min(wait, eager)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-r.wake:
			armed = !r.listening.Load()
		case <-t.C:
		}
		t.Stop()
	}
	return nil
}

func nextEager(cur, limit time.Duration) time.Duration {
	if cur <= 0 {
		return min(time.Millisecond, limit)
	}
	return min(cur*2, limit)
}

// publishError marks a failure of client.Publish (the session is fine).
type publishError struct{ err error }

func (e *publishError) Error() string { return e.err.Error() }
func (e *publishError) Unwrap() error { return e.err }

// forwardBatch reads one batch, publishes it (one client.Publish per topic,
// topics in parallel), then deletes the rows of every topic the broker
// confirmed. It returns how many rows were read.
func (r *Relay) forwardBatch(ctx context.Context, s session) (int, bool, error) {
	rows, held, err := s.fetch(ctx, r.o.BatchSize)
	if err != nil {
		return 0, false, fmt.Errorf("fetch: %w", err)
	}
	if len(rows) == 0 {
		return 0, held, nil
	}
	// Group by topic, keeping relay order within each topic.
	type group struct {
		topic string
		msgs  []*pubsub.Message
		ids   []int64
		err   error
	}
	var groups []*group
	byTopic := map[string]*group{}
	for _, rw := range rows {
		if rw.bad != nil {
			if err := r.quarantine(ctx, s, rw.id, rw.msg.ID, rw.topic, rw.bad); err != nil {
				return 0, false, err
			}
			continue
		}
		g := byTopic[rw.topic]
		if g == nil {
			g = &group{topic: rw.topic}
			byTopic[rw.topic] = g
			groups = append(groups, g)
		}
		g.msgs = append(g.msgs, rw.msg)
		g.ids = append(g.ids, rw.id)
	}
	if len(groups) == 1 {
		groups[0].err = r.client.Publish(ctx, groups[0].topic, groups[0].msgs...)
	} else {
		var wg sync.WaitGroup
		for _, g := range groups {
			wg.Add(1)
			go func() {
				defer wg.Done()
				g.err = r.client.Publish(ctx, g.topic, g.msgs...)
			}()
		}
		wg.Wait()
	}
	var done []int64
	var errs []error
	for _, g := range groups {
		if errors.Is(g.err, pubsub.ErrInvalid) {
			// Some message of the topic (or the topic itself) can never be
			// published: find it by publishing one at a time, in order.
			ok, err := r.publishEach(ctx, s, g.topic, g.msgs, g.ids)
			done = append(done, ok...)
			if err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if g.err != nil {
			errs = append(errs, fmt.Errorf("%d row(s) (ids %d..%d) to topic %q: %w", len(g.ids), g.ids[0], g.ids[len(g.ids)-1], g.topic, g.err))
			continue
		}
		done = append(done, g.ids...)
	}
	if len(done) > 0 {
		if err := s.remove(ctx, done); err != nil {
			// Published but not deleted: they will be sent again.
			return 0, false, fmt.Errorf("delete %d published row(s) (they will be re-sent): %w", len(done), err)
		}
		r.forwarded.Add(int64(len(done)))
	}
	if len(errs) > 0 {
		return 0, false, &publishError{errors.Join(errs...)}
	}
	return len(rows), held, nil
}

// publishEach publishes msgs one at a time, in order, and moves every row
// the client rejects as invalid to the quarantine table. It stops at the
// first other failure (a publishError; the rest stay in the outbox) or
// quarantine failure, and returns the ids published.
func (r *Relay) publishEach(ctx context.Context, s session, topic string, msgs []*pubsub.Message, ids []int64) ([]int64, error) {
	var done []int64
	for i, m := range msgs {
		err := r.client.Publish(ctx, topic, m)
		switch {
		case err == nil:
			done = append(done, ids[i])
		case errors.Is(err, pubsub.ErrInvalid):
			if qerr := r.quarantine(ctx, s, ids[i], m.ID, topic, err); qerr != nil {
				return done, qerr
			}
		default:
			return done, &publishError{fmt.Errorf("row %d to topic %q: %w", ids[i], topic, err)}
		}
	}
	return done, nil
}

// quarantine moves a row that can never be relayed to the quarantine table,
// with the reason, and logs it.
func (r *Relay) quarantine(ctx context.Context, s session, id int64, msgID, topic string, why error) error {
	reason := strings.ReplaceAll(strings.ToValidUTF8(why.Error(), "\uFFFD"), "\x00", "")
	if err := s.quarantine(ctx, id, reason); err != nil {
		return fmt.Errorf("move malformed row %d to %s (run Migrate to create it): %w", id, r.store.QuarantineTable(), err)
	}
	r.log.Error("outbox relay: row cannot be relayed; moved to the quarantine table",
		"row", id, "msg_id", msgID, "topic", topic, "reason", reason, "quarantine", r.store.QuarantineTable())
	return nil
}

// listenLoop keeps a LISTEN connection up; while it is down the relay
// polls every PollInterval.
func (r *Relay) listenLoop(ctx context.Context, listen func(context.Context, func()) error) {
	bo := r.newBackoff()
	failures := &failureLog{log: r.log, interval: r.o.ErrorLogInterval}
	for ctx.Err() == nil {
		err := listen(ctx, func() {
			if !r.listening.Load() {
				r.listening.Store(true)
				bo.reset()
				failures.ok()
				if r.onListen != nil {
					r.onListen()
				}
			}
			r.poke()
		})
		r.listening.Store(false)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errNoListen) {
			r.log.Info("outbox relay: " + err.Error())
			return
		}
		d := bo.next()
		failures.failed("outbox relay: listen connection failed; polling every "+r.o.PollInterval.String()+" until it is back", err, d)
		if !wait.Sleep(ctx, d) {
			return
		}
	}
}

func (r *Relay) lagLoop(ctx context.Context) {
	t := time.NewTicker(r.o.LagLogInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !r.leader.Load() {
			continue
		}
		l, err := r.store.Lag(ctx)
		if err != nil {
			if ctx.Err() == nil {
				r.log.Warn("outbox relay: lag query failed", "error", err)
			}
			continue
		}
		r.log.Info("outbox relay: lag", "rows", l.Rows, "oldest_age", l.Age, "forwarded", r.forwarded.Load())
	}
}

// retries counts a relay's consecutive failures and gives the wait before
// the next try (internal/backoff: full jitter, RetryMin doubling to
// RetryMax).
type retries struct {
	p backoff.Policy
	n int
}

func (r *Relay) newBackoff() *retries {
	return &retries{p: backoff.Policy{Initial: r.o.RetryMin, Max: r.o.RetryMax}}
}

func (b *retries) reset() { b.n = 0 }

// next returns the wait after one more failure.
func (b *retries) next() time.Duration {
	b.n++
	return b.p.Delay(b.n)
}
