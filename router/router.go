// Package router consumes subscriptions and runs handlers on their messages
// with a chosen concurrency and ordering, middleware (retry, poison queue,
// deduplication: see package middleware) and a draining shutdown.
//
// The promises:
//
//   - A message is acked only after its handler returned nil; any error (or
//     panic) nacks it, so a message is never lost: at-least-once.
//   - Each handler is a consumer group named by the handler's name: several
//     processes running the same router share the work.
//   - Concurrency modes per handler: unordered with N workers (default 1),
//     OrderedByKey (per-key lanes), StrictOrder. The number of messages in
//     flight is bounded: backpressure reaches the broker.
//   - Run returns after ctx ends and every received message was acked or
//     nacked, and the subscriptions were closed (acks flushed).
//
// See docs/router.md for the middleware order, which Use and Handle check
// for omnibus's own middleware (Rank).
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
)

// Handler processes one message. Returning nil acks it; returning an error
// nacks it (after the middleware had its say). Handlers must not modify m.
type Handler func(ctx context.Context, m *pubsub.Message) error

// BatchHandler processes a batch of messages (HandleBatch). Returning nil
// acks them all.
type BatchHandler func(ctx context.Context, msgs []*pubsub.Message) error

// Middleware wraps a Handler, like net/http middleware. Middleware given to
// Use(a, b, c) runs as a(b(c(handler))): a is the outermost. A func literal
// given to Use or With needs the conversion: router.Middleware(func(next
// router.Handler) router.Handler { ... }).
type Middleware func(Handler) Handler

// Options configure a Router. Zero values mean the defaults.
type Options struct {
	// Logger receives failures and lifecycle events. Default slog.Default().
	Logger *slog.Logger
	// ShutdownTimeout is how long in-flight handlers may run after Run's
	// context ended before their contexts are cancelled and their messages
	// nacked. Default 30s.
	ShutdownTimeout time.Duration
	// NackDelay is how long a failed message waits before redelivery when
	// its error does not say (see Redeliver). Default 1s; negative means at
	// once. During shutdown failed messages are nacked at once.
	NackDelay time.Duration
	// Publisher publishes handlers' output messages (Publish) and is what
	// HandlerInfo.Publisher returns. Default: the router's client.
	Publisher Publisher
}

// Router runs handlers on subscriptions of one client. Configure it with
// Use, Handle and HandleBatch, then call Run once.
type Router struct {
	client    *pubsub.Client
	opts      Options
	log       *slog.Logger
	nackDelay time.Duration

	running0 chan struct{} // closed when every subscription is open

	mu      sync.Mutex
	mws     []Layer
	routes  []*route
	running bool
}

// New returns a Router consuming through client.
func New(client *pubsub.Client, opts Options) *Router {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 30 * time.Second
	}
	nd := opts.NackDelay
	switch {
	case nd == 0:
		nd = time.Second
	case nd < 0:
		nd = 0
	}
	if opts.Publisher == nil && client != nil {
		opts.Publisher = client
	}
	return &Router{client: client, opts: opts, log: opts.Logger, nackDelay: nd, running0: make(chan struct{})}
}

// Running returns a channel that is closed once Run has opened every
// handler's subscription, so that messages published afterwards reach the
// handlers' consumer groups even on brokers where a new group starts at the
// newest message. It is never closed if Run fails before that.
func (r *Router) Running() <-chan struct{} { return r.running0 }

// Use adds middleware for every handler, including handlers registered
// before the call. The first middleware given is the outermost.
//
// It panics, with an error wrapping pubsub.ErrInvalid, on a nil layer, or
// when the chain of some handler (Use's layers, then the handler's With)
// would run a Ranked layer outside one of lower rank, e.g. Retry outside
// Poison; the message names the order (see Rank).
func (r *Router) Use(mw ...Layer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := checkLayers("Use", mw); err != nil {
		panic(err)
	}
	if r.running {
		panic(fmt.Errorf("router: Use called after Run started: %w", pubsub.ErrInvalid))
	}
	all := append(append([]Layer(nil), r.mws...), mw...)
	if err := checkOrder(all); err != nil {
		panic(err)
	}
	for _, rt := range r.routes {
		if err := checkOrder(append(append([]Layer(nil), all...), rt.cfg.mws...)); err != nil {
			panic(fmt.Errorf("router: handler %q on %q: %w", rt.name, rt.topic, err))
		}
	}
	r.mws = all
}

// Handle registers h for topic under name. name identifies the handler in
// logs, metrics and poison records, and is also its consumer group unless
// Group names another: each message of topic reaches one member of the
// group (one handler instance across all processes running it), and
// distinct groups each get every message. Name the group explicitly with
// Group when the handler's name may change: a new group name is a new
// group, which on a broker that starts new groups at the newest message
// (Kafka by default) skips what was published meanwhile.
//
// Like net/http's Handle, it panics on a registration mistake (an empty
// topic or name, a nil handler, an invalid option, a second handler for the
// same topic and group, registration after Run started, middleware in an
// order that Rank forbids); the panic value is an error wrapping
// pubsub.ErrInvalid.
func (r *Router) Handle(topic, name string, h Handler, opts ...HandlerOption) {
	r.add(topic, name, h, nil, opts)
}

// HandleBatch registers a batch handler for topic under name (and its
// consumer group, as for Handle; it panics as Handle does). The router
// passes up to MaxBatch messages, waiting at most MaxWait after a batch's
// first message; Concurrency(n) runs n batches at once (default 1: batches
// in receive order). OrderedByKey is not supported; StrictOrder is the
// default anyway.
//
// Every middleware (Use, With) runs for each message of a batch, whether
// the batch succeeds or fails: each message goes down its own chain to the
// batch handler, which runs once for the messages that reached it (a
// message Dedup skips as a duplicate never does), and the result goes back
// up each chain. Nil acks them. On an error the router runs each of them
// alone (a batch of one) and gives each its own result, so Retry, Poison
// and Dedup act per message and one bad message cannot fail the others.
// The batch handler must therefore tolerate seeing a message again
// (at-least-once). An error marked with Redeliver nacks the whole batch
// with that delay instead.
func (r *Router) HandleBatch(topic, name string, h BatchHandler, opts ...HandlerOption) {
	r.add(topic, name, nil, h, opts)
}

func (r *Router) add(topic, name string, h Handler, bh BatchHandler, opts []HandlerOption) {
	cfg, err := newHandlerConfig(bh != nil, opts)
	r.mu.Lock()
	defer r.mu.Unlock()
	fail := func(err error) {
		panic(fmt.Errorf("router: handler %q on %q: %w", name, topic, err))
	}
	switch {
	case err != nil:
		fail(err)
		return
	case r.running:
		fail(fmt.Errorf("registered after Run started: %w", pubsub.ErrInvalid))
		return
	case topic == "" || name == "":
		fail(fmt.Errorf("topic and name must not be empty: %w", pubsub.ErrInvalid))
		return
	case h == nil && bh == nil:
		fail(fmt.Errorf("handler is nil: %w", pubsub.ErrInvalid))
		return
	}
	if cfg.group == "" {
		cfg.group = name
	}
	if err := checkOrder(append(append([]Layer(nil), r.mws...), cfg.mws...)); err != nil {
		fail(err)
	}
	for _, rt := range r.routes {
		if rt.topic == topic && rt.name == name {
			fail(fmt.Errorf("registered twice: %w", pubsub.ErrInvalid))
		}
		if rt.topic == topic && rt.cfg.group == cfg.group {
			fail(fmt.Errorf("group %q already has handler %q on this topic: %w", cfg.group, rt.name, pubsub.ErrInvalid))
		}
	}
	r.routes = append(r.routes, &route{r: r, topic: topic, name: name, h: h, bh: bh, cfg: cfg})
}

// Run subscribes every handler and processes messages until ctx ends or a
// subscription fails for good. Then it drains: it stops receiving, lets
// in-flight handlers finish within Options.ShutdownTimeout, nacks messages
// that were received but not started, cancels the handlers' contexts and
// nacks their messages when the timeout passes, and closes the
// subscriptions (flushing acks). It returns only then.
//
// Run returns nil after a clean shutdown caused by ctx; an error when a
// registration was invalid, a subscription could not be opened or failed
// (the other handlers are drained first), or handlers were still running at
// the shutdown timeout (their messages were nacked; their goroutines may
// still be running). Run may be called once.
func (r *Router) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.running {
		r.mu.Unlock()
		return errors.New("router: Run called twice")
	}
	r.running = true
	routes, mws := r.routes, append([]Layer(nil), r.mws...)
	r.mu.Unlock()
	if r.client == nil {
		return fmt.Errorf("router: no client: %w", pubsub.ErrInvalid)
	}
	if len(routes) == 0 {
		return fmt.Errorf("router: no handlers registered: %w", pubsub.ErrInvalid)
	}

	for i, rt := range routes {
		sopts := append([]pubsub.SubscribeOption{pubsub.Group(rt.cfg.group), pubsub.Prefetch(rt.prefetch())}, rt.cfg.subOpts...)
		sub, err := r.client.Subscribe(ctx, rt.topic, sopts...)
		if err != nil {
			for _, prev := range routes[:i] {
				_ = prev.sub.Close()
			}
			return fmt.Errorf("router: handler %q: %w", rt.name, err)
		}
		rt.sub = sub
	}

	recvCtx, stopRecv := context.WithCancel(ctx)
	defer stopRecv()
	hctx, abort := context.WithCancel(context.WithoutCancel(ctx))
	defer abort()

	var (
		wg      sync.WaitGroup
		errMu   sync.Mutex
		runErrs []error
	)
	failRun := func(rt *route, err error) {
		errMu.Lock()
		runErrs = append(runErrs, fmt.Errorf("router: handler %q on %q: %w", rt.name, rt.topic, err))
		errMu.Unlock()
		r.log.Error("router: subscription failed; shutting down", "topic", rt.topic, "handler", rt.name, "error", err)
		stopRecv()
	}
	for _, rt := range routes {
		rt.info = HandlerInfo{Topic: rt.topic, Name: rt.name, Client: r.client, Publisher: r.opts.Publisher, Logger: r.log, draining: recvCtx.Done()}
		rt.ctx = context.WithValue(hctx, infoKey{}, &rt.info)
		rt.draining = recvCtx.Done()
		rt.fail = failRun
		leaf := rt.h
		if rt.bh != nil {
			bh := rt.bh
			leaf = func(ctx context.Context, m *pubsub.Message) error { return bh(ctx, []*pubsub.Message{m}) }
		}
		rt.mws = append(append([]Layer(nil), mws...), rt.cfg.mws...)
		rt.chain = compose(leaf, rt.mws)
		rt.start(recvCtx, &wg)
		r.log.Debug("router: handler started", "topic", rt.topic, "handler", rt.name, "mode", rt.cfg.mode, "concurrency", rt.cfg.concurrency)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	close(r.running0)

	<-recvCtx.Done()
	r.log.Debug("router: draining", "timeout", r.opts.ShutdownTimeout)
	timer := time.NewTimer(r.opts.ShutdownTimeout)
	select {
	case <-done:
		timer.Stop()
	case <-timer.C:
		abort()
		forced := 0
		for _, rt := range routes {
			forced += rt.abort()
		}
		r.log.Error("router: shutdown timeout: handlers still running; their messages were nacked", "timeout", r.opts.ShutdownTimeout, "nacked", forced)
		errMu.Lock()
		runErrs = append(runErrs, fmt.Errorf("router: shutdown: handlers still running after %v; %d message(s) nacked", r.opts.ShutdownTimeout, forced))
		errMu.Unlock()
	}
	for _, rt := range routes {
		if err := rt.sub.Close(); err != nil {
			errMu.Lock()
			runErrs = append(runErrs, fmt.Errorf("router: handler %q: %w", rt.name, err))
			errMu.Unlock()
		}
	}
	errMu.Lock()
	defer errMu.Unlock()
	return errors.Join(runErrs...)
}

// call runs h, turning a panic into a *PanicError: the router's last line of
// defence (use the Recover middleware to recover inside Retry and Poison).
func call(h Handler, ctx context.Context, m *pubsub.Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = NewPanicError(p)
		}
	}()
	return h(ctx, m)
}

func callBatch(h BatchHandler, ctx context.Context, msgs []*pubsub.Message) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = NewPanicError(p)
		}
	}()
	return h(ctx, msgs)
}

// route is one registered handler at run time.
type route struct {
	r           *Router
	topic, name string
	h           Handler
	bh          BatchHandler
	cfg         handlerConfig

	sub      *pubsub.Subscription
	info     HandlerInfo
	ctx      context.Context // handler context: values of Run's ctx, cancelled at the shutdown timeout
	chain    Handler
	mws      []Layer // the router's and the handler's, outermost first
	draining <-chan struct{}
	fail     func(*route, error)

	cur     []atomic.Pointer[pubsub.Delivery]    // per worker: the delivery in its handler
	curB    []atomic.Pointer[[]*pubsub.Delivery] // per batch worker
	sched   *keySched
	batches chan []*pubsub.Delivery
}

func (rt *route) prefetch() int {
	switch {
	case rt.bh != nil:
		return max(64, rt.cfg.maxBatch)
	case rt.cfg.mode == modeUnordered:
		return max(64, rt.cfg.concurrency)
	}
	return max(64, min(rt.cfg.maxInFlight, 1024))
}

func (rt *route) isDraining() bool {
	select {
	case <-rt.draining:
		return true
	default:
		return false
	}
}

func (rt *route) start(recvCtx context.Context, wg *sync.WaitGroup) {
	n := rt.cfg.concurrency
	switch {
	case rt.bh != nil:
		rt.curB = make([]atomic.Pointer[[]*pubsub.Delivery], n)
		rt.batches = make(chan []*pubsub.Delivery, n)
		wg.Add(1 + n)
		go func() { defer wg.Done(); rt.collect(recvCtx) }()
		for i := range n {
			go func() { defer wg.Done(); rt.batchWorker(i) }()
		}
	case rt.cfg.mode == modeUnordered:
		rt.cur = make([]atomic.Pointer[pubsub.Delivery], n)
		wg.Add(n)
		for i := range n {
			go func() { defer wg.Done(); rt.worker(recvCtx, i) }()
		}
	default:
		rt.cur = make([]atomic.Pointer[pubsub.Delivery], n)
		rt.sched = newKeySched(rt.cfg.maxInFlight)
		wg.Add(1 + n)
		go func() { defer wg.Done(); rt.dispatch(recvCtx) }()
		for i := range n {
			go func() { defer wg.Done(); rt.keyWorker(i) }()
		}
	}
}

// abort nacks every message the handler still holds after the shutdown
// timeout and returns how many it nacked.
func (rt *route) abort() int {
	n := 0
	for i := range rt.cur {
		if d := rt.cur[i].Load(); d != nil && d.Nack(0) == nil {
			n++
		}
	}
	for i := range rt.curB {
		if b := rt.curB[i].Load(); b != nil {
			for _, d := range *b {
				if d.Nack(0) == nil {
					n++
				}
			}
		}
	}
	if rt.sched != nil {
		for _, d := range rt.sched.abort() {
			if d.Nack(0) == nil {
				n++
			}
		}
	}
	if rt.batches != nil {
		for {
			select {
			case b, ok := <-rt.batches:
				if !ok {
					return n
				}
				for _, d := range b {
					if d.Nack(0) == nil {
						n++
					}
				}
				continue
			default:
			}
			return n
		}
	}
	return n
}

// receiveErr reports a Receive error unless it comes from the shutdown.
func (rt *route) receiveErr(recvCtx context.Context, err error) {
	if recvCtx.Err() == nil {
		rt.fail(rt, err)
	}
}

// settle acks d when err is nil and nacks it otherwise.
func (rt *route) settle(d *pubsub.Delivery, err error) {
	if err == nil {
		if aerr := d.Ack(); aerr != nil {
			rt.settleErr(d, aerr)
		}
		return
	}
	delay, marked := RedeliverDelay(err)
	if !marked {
		delay = rt.r.nackDelay
		if rt.isDraining() {
			delay = 0
		}
		if rt.ctx.Err() == nil {
			rt.r.log.Error("router: handler failed; nacking", "topic", rt.topic, "handler", rt.name, "id", d.Message.ID, "attempt", d.Message.Attempt, "redeliver_in", delay, "error", err)
		}
	}
	if nerr := d.Nack(delay); nerr != nil {
		rt.settleErr(d, nerr)
	}
}

func (rt *route) settleErr(d *pubsub.Delivery, err error) {
	if errors.Is(err, pubsub.ErrAlreadyAcked) || errors.Is(err, pubsub.ErrClosed) {
		// Nacked at the shutdown timeout, or the subscription is closed:
		// the broker redelivers it.
		return
	}
	rt.r.log.Warn("router: ack/nack failed; the message will be redelivered", "topic", rt.topic, "handler", rt.name, "id", d.Message.ID, "error", err)
}

// worker is one unordered worker: receive, handle, settle.
func (rt *route) worker(recvCtx context.Context, i int) {
	for recvCtx.Err() == nil {
		d, err := rt.sub.Receive(recvCtx)
		if err != nil {
			rt.receiveErr(recvCtx, err)
			return
		}
		rt.cur[i].Store(d)
		rt.settle(d, call(rt.chain, rt.ctx, d.Message))
		rt.cur[i].Store(nil)
	}
}

// collect gathers batches for the batch workers.
func (rt *route) collect(recvCtx context.Context) {
	defer close(rt.batches)
	for recvCtx.Err() == nil {
		d, err := rt.sub.Receive(recvCtx)
		if err != nil {
			rt.receiveErr(recvCtx, err)
			return
		}
		batch := make([]*pubsub.Delivery, 1, rt.cfg.maxBatch)
		batch[0] = d
		var rerr error
		if rt.cfg.maxBatch > 1 {
			wctx, cancel := context.WithTimeout(recvCtx, rt.cfg.maxWait)
			for len(batch) < rt.cfg.maxBatch {
				d, err := rt.sub.Receive(wctx)
				if err != nil {
					if wctx.Err() == nil {
						rerr = err
					}
					break
				}
				batch = append(batch, d)
			}
			cancel()
		}
		rt.batches <- batch
		if rerr != nil {
			rt.receiveErr(recvCtx, rerr)
			return
		}
	}
}

func (rt *route) batchWorker(i int) {
	for batch := range rt.batches {
		if rt.isDraining() {
			for _, d := range batch {
				_ = d.Nack(0)
			}
			continue
		}
		rt.curB[i].Store(&batch)
		if len(rt.mws) == 0 {
			rt.runBatch(batch)
		} else {
			for j, err := range rt.runBatchRound(batch) {
				rt.settle(batch[j], err)
			}
		}
		rt.curB[i].Store(nil)
	}
}

// runBatch runs a batch handler without middleware.
func (rt *route) runBatch(batch []*pubsub.Delivery) {
	msgs := make([]*pubsub.Message, len(batch))
	for j, d := range batch {
		msgs[j] = d.Message
	}
	for j, err := range rt.batchResults(msgs) {
		rt.settle(batch[j], err)
	}
}

// dispatch receives for the ordered modes and queues each message behind
// the earlier in-flight messages of its key. It takes what the
// subscription has fetched in batches (up to the free in-flight room) and
// queues a batch under one lock, so that workers are woken per batch of
// ready keys, not per message.
func (rt *route) dispatch(recvCtx context.Context) {
	s := rt.sched
	defer s.close()
	var buf []*pubsub.Delivery
	for {
		free := s.room(recvCtx)
		if free == 0 {
			return // recvCtx ended
		}
		var err error
		buf, err = rt.sub.ReceiveBatch(recvCtx, buf[:0], free)
		if len(buf) > 0 {
			s.add(buf, rt.cfg.mode == modeStrict)
			clear(buf)
		}
		if err != nil {
			rt.receiveErr(recvCtx, err)
			return
		}
	}
}

func (rt *route) keyWorker(i int) {
	s := rt.sched
	var q *keyQueue
	settled := 0
	for {
		var d *pubsub.Delivery
		q, d = s.next(q, settled)
		if d == nil {
			return
		}
		if rt.isDraining() {
			// Not started: give it back now, after the earlier
			// messages of its key were settled (order is kept).
			_ = d.Nack(0)
		} else {
			rt.cur[i].Store(d)
			rt.runInLane(d)
			rt.cur[i].Store(nil)
		}
		settled = 1
	}
}

// runInLane runs the handler on d, a message of an ordered lane, and
// settles it. A failed message holds its lane: unless the handler was
// registered with RedeliverOutOfOrder, it is not nacked but handled again
// in place after its redelivery delay (Attempt counting up), until it
// succeeds or a middleware settles it (Poison acks it after writing it to
// the poison topic), so that no later message of its key takes effect
// first. Only a shutdown gives it back to the broker, and then the later
// messages of its key follow it (keyWorker nacks them in order).
func (rt *route) runInLane(d *pubsub.Delivery) {
	for {
		err := call(rt.chain, rt.ctx, d.Message)
		if err == nil || rt.cfg.outOfOrder || rt.isDraining() || rt.ctx.Err() != nil {
			rt.settle(d, err)
			return
		}
		delay, marked := RedeliverDelay(err)
		if !marked {
			delay = max(rt.r.nackDelay, 0)
			rt.r.log.Error("router: handler failed; holding its key and retrying in place", "topic", rt.topic, "handler", rt.name, "id", d.Message.ID, "key", d.Message.Key, "attempt", d.Message.Attempt, "retry_in", delay, "error", err)
		}
		if !rt.holdFor(delay) {
			rt.settle(d, err) // shutdown: nacked at once
			return
		}
		d.Message.Attempt++
	}
}

// holdFor waits d and reports true, or false as soon as the router starts
// draining or the handler context ends.
func (rt *route) holdFor(d time.Duration) bool {
	if d <= 0 {
		return !rt.isDraining() && rt.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-rt.draining:
		return false
	case <-rt.ctx.Done():
		return false
	}
}

// keySched holds per-key FIFO queues for the ordered modes. A keyed queue
// stays in the map while it has messages waiting or in a handler, and
// afterwards while idle (so that a key seen again costs no map insert),
// until many idle queues pile up. A queue with waiting messages and no
// worker is on the ready list; a worker owns a queue from when it takes it
// from there until it is empty, so one key never runs on two workers at
// once. Workers take queues from the ready list without a hand-off while
// there are any, and wait on a condition variable only when there are
// none.
type keySched struct {
	mu       sync.Mutex
	queues   map[string]*keyQueue
	idle     int // keyed queues in the map with nothing waiting or running
	free     []*keyQueue
	ready    []*keyQueue // ready[rhead:] wait for a worker, oldest first
	rhead    int
	waiting  int // workers waiting on cond
	cond     sync.Cond
	inflight int // messages waiting or in a handler
	max      int // in-flight bound
	low      int // dispatch is woken when inflight drops to low
	dispWait bool
	roomC    chan struct{} // cap 1: inflight dropped to low
	closed   bool          // dispatch ended: workers leave when nothing is ready
	aborted  bool
}

type queueState uint8

const (
	queueIdle  queueState = iota // keyed, in the map, empty
	queueReady                   // on the ready list
	queueOwned                   // a worker runs its messages
)

type keyQueue struct {
	key   string
	keyed bool
	state queueState
	items []*pubsub.Delivery // items[head:] wait
	head  int
}

func newKeySched(maxInFlight int) *keySched {
	s := &keySched{
		queues: map[string]*keyQueue{},
		max:    maxInFlight,
		low:    maxInFlight - max(1, maxInFlight/8),
		roomC:  make(chan struct{}, 1),
	}
	s.cond.L = &s.mu
	return s
}

// room waits until messages may be received and returns how many, or 0
// when ctx ended.
func (s *keySched) room(ctx context.Context) int {
	for {
		s.mu.Lock()
		free := s.max - s.inflight
		if free > 0 {
			s.mu.Unlock()
			return free
		}
		s.dispWait = true
		s.mu.Unlock()
		select {
		case <-s.roomC:
		case <-ctx.Done():
			return 0
		}
	}
}

// queue returns a fresh (or recycled) queue. s.mu must be held.
func (s *keySched) queue(key string, keyed bool) *keyQueue {
	if n := len(s.free); n > 0 {
		q := s.free[n-1]
		s.free[n-1] = nil
		s.free = s.free[:n-1]
		q.key, q.keyed = key, keyed
		return q
	}
	return &keyQueue{key: key, keyed: keyed}
}

// add queues received deliveries (strict: all in one queue).
func (s *keySched) add(ds []*pubsub.Delivery, strict bool) {
	s.mu.Lock()
	s.inflight += len(ds)
	woken := 0
	for _, d := range ds {
		key, keyed := d.Message.Key, true
		switch {
		case strict:
			key = ""
		case key == "":
			keyed = false
		}
		var q *keyQueue
		if keyed {
			q = s.queues[key]
		}
		if q == nil {
			q = s.queue(key, keyed)
			q.state = queueIdle
			if keyed {
				s.queues[key] = q
				s.idle++
			}
		}
		q.items = append(q.items, d)
		if q.state == queueIdle {
			if q.keyed {
				s.idle--
			}
			q.state = queueReady
			s.ready = append(s.ready, q)
			if woken < s.waiting {
				woken++
				s.cond.Signal()
			}
		}
	}
	s.mu.Unlock()
}

// next settles the accounting for the message the worker just finished
// (settled is 1 after a message, 0 at the start) and returns the worker's
// next message: the next of q while q has one, else the first of the
// oldest ready queue, waiting for one. It returns nil when the router is
// done with the worker (dispatch ended and nothing is ready, or abort).
func (s *keySched) next(q *keyQueue, settled int) (*keyQueue, *pubsub.Delivery) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if settled > 0 {
		s.inflight -= settled
		if s.dispWait && s.inflight <= s.low {
			s.dispWait = false
			select {
			case s.roomC <- struct{}{}:
			default:
			}
		}
	}
	if q != nil {
		if d := q.pop(); d != nil && !s.aborted {
			return q, d
		}
		s.retire(q)
	}
	for {
		if s.aborted {
			return nil, nil
		}
		if s.rhead < len(s.ready) {
			q := s.ready[s.rhead]
			s.ready[s.rhead] = nil
			s.rhead++
			if s.rhead == len(s.ready) {
				s.ready, s.rhead = s.ready[:0], 0
			}
			q.state = queueOwned
			return q, q.pop()
		}
		if s.closed {
			return nil, nil
		}
		s.waiting++
		s.cond.Wait()
		s.waiting--
	}
}

// pop removes q's next message, or returns nil when it has none. The
// scheduler's mu must be held.
func (q *keyQueue) pop() *pubsub.Delivery {
	if q.head == len(q.items) {
		return nil
	}
	d := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	return d
}

// retire ends a worker's ownership of q, which is empty (or aborted). s.mu
// must be held.
func (s *keySched) retire(q *keyQueue) {
	clear(q.items[q.head:])
	q.items, q.head = q.items[:0], 0
	if cap(q.items) > 64 {
		q.items = nil
	}
	q.state = queueIdle
	if q.keyed && s.queues[q.key] == q {
		s.idle++
		if s.idle > max(1024, 2*s.max) {
			s.sweep()
		}
		return
	}
	s.recycle(q)
}

// sweep drops idle queues from the map. s.mu must be held.
func (s *keySched) sweep() {
	for k, q := range s.queues {
		if q.state == queueIdle && q.head == len(q.items) {
			delete(s.queues, k)
			s.recycle(q)
		}
	}
	s.idle = 0
}

func (s *keySched) recycle(q *keyQueue) {
	q.key, q.keyed = "", false
	if len(s.free) < 256 {
		s.free = append(s.free, q)
	}
}

// close tells the workers that nothing more will be queued: they leave once
// nothing is ready.
func (s *keySched) close() {
	s.mu.Lock()
	s.closed = true
	s.cond.Broadcast()
	s.mu.Unlock()
}

// abort stops the workers and returns every message not yet started.
func (s *keySched) abort() []*pubsub.Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.aborted = true
	s.cond.Broadcast()
	var out []*pubsub.Delivery
	take := func(q *keyQueue) {
		out = append(out, q.items[q.head:]...)
		clear(q.items)
		q.items, q.head = q.items[:0], 0
	}
	for _, q := range s.queues {
		take(q)
	}
	for _, q := range s.ready[s.rhead:] {
		take(q)
	}
	return out
}
