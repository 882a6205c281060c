package pubsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Client is a connection to one broker through its adapter. It is safe for
// concurrent use; share one per broker per process.
type Client struct {
	drv    driver.Broker
	caps   driver.Capabilities
	logger *slog.Logger

	maxBatch, maxConc int
	groupSends        bool
	promptSends       bool
	inlineAcks        bool
	checkMessage      func(*driver.Message) error
	observers         []Observer
	topicNames        nameCheck
	groupNames        nameCheck

	mu       sync.Mutex
	closed   bool
	batchers map[string]*batcher
	subs     map[*Subscription]struct{}
	pending  sync.WaitGroup // in-flight Publish calls
}

// ClientOption configures a Client.
type ClientOption func(*Client)

// WithLogger sets the logger for background problems (failed ack flushes,
// retried receive errors). The default is slog.Default().
func WithLogger(l *slog.Logger) ClientOption {
	return func(c *Client) {
		if l != nil {
			c.logger = l
		}
	}
}

// NewClient wraps an adapter's Broker in the portable Client. Adapters and
// tests use it; services call Open.
func NewClient(drv driver.Broker, opts ...ClientOption) *Client {
	c := &Client{
		drv:      drv,
		caps:     drv.Capabilities(),
		logger:   slog.Default(),
		maxBatch: 500,
		maxConc:  4,
		batchers: map[string]*batcher{},
		subs:     map[*Subscription]struct{}{},
	}
	tr := drv.Traits()
	if tr.MaxSendBatch > 0 {
		c.maxBatch = tr.MaxSendBatch
	}
	if tr.MaxConcurrentSends > 0 {
		c.maxConc = tr.MaxConcurrentSends
	}
	c.groupSends = tr.GroupSends
	c.promptSends = tr.PromptSends
	c.inlineAcks = tr.InlineAcks
	c.checkMessage = tr.CheckMessage
	c.topicNames = newNameCheck(c.caps.Broker, "topic", c.caps.TopicNames)
	c.groupNames = newNameCheck(c.caps.Broker, "group", c.caps.GroupNames)
	for _, o := range opts {
		o(c)
	}
	return c
}

// Capabilities reports what the broker honours.
func (c *Client) Capabilities() Capabilities { return c.caps }

// Capabilities describes a broker; see driver.Capabilities.
type Capabilities = driver.Capabilities

// Publish sends msgs to topic and returns after the broker accepted every
// one of them (nil), or an error. On error some messages may have been
// published (at-least-once: retrying the call may duplicate them; consumers
// deduplicate by ID).
//
// Publish fills an empty ID with a new UUIDv7 in the caller's message, so the
// caller can record it. Messages of one call with the same Key keep their
// order. Concurrent calls are batched together. Publish does not keep msgs
// after it returns, with one exception: when ctx ends while the messages are
// already on their way to the broker (in a batch other callers still wait
// for), Publish returns ctx's error at once and the adapter may read their
// Payload and Metadata until that send ends; do not modify messages after a
// Publish that failed with a context error. Messages whose send had not
// started when ctx ended are never sent.
func (c *Client) Publish(ctx context.Context, topic string, msgs ...*Message) error {
	if err := c.topicNames.check(topic); err != nil {
		return fmt.Errorf("pubsub: publish: %w", err)
	}
	if len(msgs) == 0 {
		return nil
	}
	var now int64 // Unix ms for new IDs, read once per call
	check := c.checkMessage
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("pubsub: publish to %q: message %d of %d is nil: %w", topic, i, len(msgs), ErrInvalid)
		}
		if max := c.caps.MaxMessageSize; max > 0 && len(m.Payload) > max {
			return fmt.Errorf("pubsub: publish to %q: message %d (id %q) payload is %d bytes, over the broker's maximum of %d: %w",
				topic, i, m.ID, len(m.Payload), max, ErrInvalid)
		}
		if m.ID == "" {
			if now == 0 {
				now = time.Now().UnixMilli()
			}
			m.ID = newIDAt(now)
		}
		if check != nil {
			if err := check(&driver.Message{ID: m.ID, Key: m.Key, Payload: m.Payload, Metadata: m.Metadata}); err != nil {
				return fmt.Errorf("pubsub: publish to %q: message %d: %w", topic, i, err)
			}
		}
	}
	var dones []func(error)
	if len(c.observers) > 0 {
		msgs = ownCopies(msgs)
	}
	for _, o := range c.observers {
		if done := o.Publish(ctx, topic, msgs); done != nil {
			dones = append(dones, done)
		}
	}
	err := c.publish(ctx, topic, msgs)
	for _, done := range dones {
		done(err)
	}
	return err
}

// ownCopies returns copies of msgs with their own Metadata maps, for the
// observers to write into: the caller's messages and maps stay as they were
// (apart from the ID filled in before).
func ownCopies(msgs []*Message) []*Message {
	arr := make([]Message, len(msgs))
	out := make([]*Message, len(msgs))
	for i, m := range msgs {
		arr[i] = *m
		arr[i].Metadata = maps.Clone(m.Metadata)
		out[i] = &arr[i]
	}
	return out
}

func (c *Client) publish(ctx context.Context, topic string, msgs []*Message) error {
	dms := make([]*driver.Message, len(msgs))
	arr := make([]driver.Message, len(msgs)) // one allocation for the call
	for i, m := range msgs {
		arr[i] = driver.Message{ID: m.ID, Key: m.Key, Payload: m.Payload, Metadata: m.Metadata}
		dms[i] = &arr[i]
	}
	b, err := c.batcher(topic)
	if err != nil {
		return fmt.Errorf("pubsub: publish to %q: %w", topic, err)
	}
	defer c.pending.Done()
	if err := b.send(ctx, dms); err != nil {
		return fmt.Errorf("pubsub: publish %d message(s) to %q: %w", len(msgs), topic, err)
	}
	return nil
}

func (c *Client) batcher(topic string) (*batcher, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	c.pending.Add(1)
	b := c.batchers[topic]
	if b == nil {
		b = &batcher{topic: topic, drv: c.drv, maxBatch: c.maxBatch, maxConc: c.maxConc, group: c.groupSends, inline: c.promptSends}
		c.batchers[topic] = b
	}
	return b, nil
}

// ValidateTopic reports whether topic (or a group name) passes the
// portable rule, what no broker accepts: it must not be empty, must be
// valid UTF-8 and must not contain a NUL byte. Each broker's own limits are
// in its Capabilities (TopicNames, GroupNames); Publish and Subscribe check
// both before anything reaches the broker. The error wraps ErrInvalid.
func ValidateTopic(topic string) error { return validName("topic", topic) }

// validName checks the portable rule for a name of field ("topic", "group").
func validName(field, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%s is empty: %w", field, ErrInvalid)
	case !utf8.ValidString(name):
		return fmt.Errorf("%s %q is not valid UTF-8: %w", field, clip(name), ErrInvalid)
	case strings.IndexByte(name, 0) >= 0:
		return fmt.Errorf("%s %q contains a NUL byte: %w", field, clip(name), ErrInvalid)
	}
	return nil
}

// clip shortens a long name for an error message, on a rune boundary.
func clip(name string) string {
	const n = 64
	if len(name) <= n {
		return name
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(name[cut]) {
		cut--
	}
	return name[:cut] + "..."
}

// nameCheck applies the portable rule and one of the broker's NameRules.
type nameCheck struct {
	broker, field string
	rule          driver.NameRule
	re            *regexp.Regexp
	err           error      // the adapter's Pattern does not compile
	passed        *nameCache // with a Pattern: names that passed, checked once
}

// nameCache remembers up to maxCachedNames names that passed a nameCheck
// with a Pattern, so that a Publish to a known topic costs a map lookup,
// not a regular expression.
type nameCache struct {
	names sync.Map
	n     atomic.Int64
}

const maxCachedNames = 4096

func newNameCheck(broker, field string, rule driver.NameRule) nameCheck {
	if broker == "" {
		broker = "the broker"
	}
	nc := nameCheck{broker: broker, field: field, rule: rule}
	if rule.Pattern != "" {
		nc.re, nc.err = regexp.Compile(`^(?:` + rule.Pattern + `)$`)
		nc.passed = &nameCache{}
	}
	return nc
}

// check returns nil if name is one the broker accepts, else an error
// wrapping ErrInvalid that names the field, the broker and its rule.
func (nc nameCheck) check(name string) error {
	if nc.passed != nil {
		if _, ok := nc.passed.names.Load(name); ok {
			return nil
		}
	}
	if err := validName(nc.field, name); err != nil {
		return err
	}
	switch {
	case nc.err != nil:
		return fmt.Errorf("%s %q: the adapter's %s name pattern is invalid: %v: %w", nc.field, clip(name), nc.broker, nc.err, ErrInvalid)
	case nc.rule.MaxBytes > 0 && len(name) > nc.rule.MaxBytes:
		return fmt.Errorf("%s %q is %d bytes: %s accepts %s names of %s: %w", nc.field, clip(name), len(name), nc.broker, nc.field, nc.rule, ErrInvalid)
	case nc.re != nil && !nc.re.MatchString(name):
		return fmt.Errorf("%s %q: %s accepts %s names of %s: %w", nc.field, clip(name), nc.broker, nc.field, nc.rule, ErrInvalid)
	}
	if nc.passed != nil && nc.passed.n.Load() < maxCachedNames {
		if _, loaded := nc.passed.names.LoadOrStore(name, struct{}{}); !loaded {
			nc.passed.n.Add(1)
		}
	}
	return nil
}

// Subscribe starts receiving from topic. With Group(name), members of one
// group compete for messages and distinct groups each get every message;
// without it the subscription is an anonymous group of its own.
func (c *Client) Subscribe(ctx context.Context, topic string, opts ...SubscribeOption) (*Subscription, error) {
	if err := c.topicNames.check(topic); err != nil {
		return nil, fmt.Errorf("pubsub: subscribe: %w", err)
	}
	so := subscribeOptions{prefetch: 64, ackFlush: time.Millisecond}
	for _, o := range opts {
		o(&so)
	}
	if so.err != nil {
		return nil, fmt.Errorf("pubsub: subscribe to %q: %w", topic, so.err)
	}
	if so.group != "" {
		if err := c.groupNames.check(so.group); err != nil {
			return nil, fmt.Errorf("pubsub: subscribe to %q: %w", topic, err)
		}
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, fmt.Errorf("pubsub: subscribe to %q: %w", topic, ErrClosed)
	}
	c.mu.Unlock()
	ds, err := c.drv.OpenSubscription(ctx, topic, driver.SubscriptionOptions{
		Group: so.group, StartFromOldest: so.fromOldest && c.caps.Replay, MaxBatch: so.prefetch,
	})
	if err != nil {
		return nil, fmt.Errorf("pubsub: subscribe to %q (group %q): %w", topic, so.group, err)
	}
	s := newSubscription(c, topic, so, ds)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		_ = s.Close()
		return nil, fmt.Errorf("pubsub: subscribe to %q: %w", topic, ErrClosed)
	}
	c.subs[s] = struct{}{}
	c.mu.Unlock()
	return s, nil
}

// DeleteTopic removes topic with its consumer groups (at least those named)
// and their waiting messages, where the adapter can (driver.TopicDeleter);
// otherwise it returns an error wrapping ErrUnsupported. It is for
// throwaway topics: close their subscriptions first.
func (c *Client) DeleteTopic(ctx context.Context, topic string, groups ...string) error {
	if err := c.topicNames.check(topic); err != nil {
		return fmt.Errorf("pubsub: delete topic: %w", err)
	}
	td, ok := c.drv.(driver.TopicDeleter)
	if !ok {
		return fmt.Errorf("pubsub: delete topic %q: the adapter cannot delete topics: %w", topic, ErrUnsupported)
	}
	if err := td.DeleteTopic(ctx, topic, groups); err != nil {
		return fmt.Errorf("pubsub: delete topic %q: %w", topic, err)
	}
	return nil
}

func (c *Client) forget(s *Subscription) {
	c.mu.Lock()
	delete(c.subs, s)
	c.mu.Unlock()
}

// Close closes every open subscription (flushing their acks, giving unacked
// deliveries back), waits for in-flight Publish calls, then closes the
// broker connection. Later calls return ErrClosed. Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	subs := make([]*Subscription, 0, len(c.subs))
	for s := range c.subs {
		subs = append(subs, s)
	}
	c.mu.Unlock()
	var errs []error
	for _, s := range subs {
		if err := s.Close(); err != nil && !errors.Is(err, ErrClosed) {
			errs = append(errs, err)
		}
	}
	c.pending.Wait()
	if err := c.drv.Close(); err != nil {
		errs = append(errs, fmt.Errorf("pubsub: close broker: %w", err))
	}
	return errors.Join(errs...)
}

// As is the escape hatch to the adapter (Go CDK's pattern): target must be
// a non-nil pointer; As sets *target to the adapter's Broker when its type
// fits (var kb *kafka.Broker; c.As(&kb)), or to a client library value the
// adapter exposes through its own As method (var kc *kgo.Client; c.As(&kc)),
// and reports whether it did. Each adapter documents what it exposes.
func (c *Client) As(target any) bool {
	v := reflect.ValueOf(target)
	if !v.IsValid() || v.Kind() != reflect.Pointer || v.IsNil() {
		return false
	}
	if d := reflect.ValueOf(c.drv); d.Type().AssignableTo(v.Elem().Type()) {
		v.Elem().Set(d)
		return true
	}
	if a, ok := c.drv.(interface{ As(target any) bool }); ok {
		return a.As(target)
	}
	return false
}

// Driver returns the adapter's Broker, for tools that drive the driver
// contract directly (conformance suites, the CLI's driver benchmark).
// Reach adapter features with As.
func (c *Client) Driver() driver.Broker { return c.drv }

// batcher combines concurrent Publish calls to one topic into SendBatch
// calls: a call is sent at once while fewer than maxConc sends are in flight,
// otherwise it waits and goes out with the others that queued meanwhile.
// With group (driver.Traits.GroupSends) a call is sent at once only when no send
// is in flight; otherwise it waits for the next send, and a further
// concurrent send starts only once a full batch (maxBatch messages) waits.
// With inline (driver.Traits.PromptSends) a call that would be sent alone is
// sent on its caller's goroutine. A call's messages are never split across
// concurrent sends, so per-key order within a call holds.
type batcher struct {
	topic    string
	drv      driver.Broker
	maxBatch int
	maxConc  int
	group    bool
	inline   bool

	mu       sync.Mutex
	active   int
	waiting  []*sendReq
	waitingN int           // messages in waiting
	arrived  chan struct{} // non-nil while a gather waits: closed by the call that queues its want-th message
	want     int
}

// startable reports whether another concurrent send should start now for
// what waits. b.mu must be held.
func (b *batcher) startable() bool {
	return len(b.waiting) > 0 && b.canStart(b.waitingN)
}

// canStart reports whether a send of n messages may start now: a slot is
// free and, with grouping, nothing is in flight or n fills a batch. b.mu
// must be held.
func (b *batcher) canStart(n int) bool {
	return b.active < b.maxConc && (b.active == 0 || !b.group || n >= b.maxBatch)
}

type sendReq struct {
	ctx  context.Context
	msgs []*driver.Message
	done chan error

	mu     sync.Mutex
	gone   bool   // the caller gave up (its context ended)
	onGone func() // set while its batch is being sent
}

// sendReqs recycles answered requests with their done channels: two
// allocations fewer per Publish call.
var sendReqs = sync.Pool{New: func() any { return &sendReq{done: make(chan error, 1)} }}

// giveUp records that the caller stopped waiting, before Publish returns:
// a send whose every caller gave up is cancelled by then.
func (r *sendReq) giveUp() {
	r.mu.Lock()
	if r.gone {
		r.mu.Unlock()
		return
	}
	r.gone = true
	f := r.onGone
	r.mu.Unlock()
	if f != nil {
		f()
	}
}

func (b *batcher) send(ctx context.Context, msgs []*driver.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	if b.inline && len(b.waiting) == 0 && b.canStart(len(msgs)) {
		return b.sendInline(ctx, msgs) // unlocks b.mu
	}
	r := sendReqs.Get().(*sendReq)
	r.ctx, r.msgs = ctx, msgs
	b.waiting = append(b.waiting, r)
	b.waitingN += len(msgs)
	if b.arrived != nil && b.waitingN >= b.want {
		close(b.arrived)
		b.arrived = nil
	}
	if b.startable() {
		b.active++
		batch := b.take()
		b.mu.Unlock()
		go b.run(batch)
	} else {
		b.mu.Unlock()
	}
	select {
	case err := <-r.done:
		// Answered: the batcher is done with r (it sends on done last),
		// so r is reused. A request whose caller gave up is not.
		r.ctx, r.msgs = nil, nil
		sendReqs.Put(r)
		return err
	case <-ctx.Done():
		b.mu.Lock()
		for i, w := range b.waiting {
			if w == r { // not taken into a send yet: withdraw it
				b.waiting = append(b.waiting[:i:i], b.waiting[i+1:]...)
				b.waitingN -= len(r.msgs)
				b.mu.Unlock()
				return fmt.Errorf("%w (nothing was sent)", ctx.Err())
			}
		}
		b.mu.Unlock()
		r.giveUp()
		return fmt.Errorf("%w (the messages may still be published if others in their batch wait)", ctx.Err())
	}
}

// sendInline sends msgs on the caller's goroutine with the caller's
// context, in a send slot of its own; calls that queued meanwhile are
// handed to a sender goroutine in that slot. b.mu is held on entry and
// released by sendInline.
func (b *batcher) sendInline(ctx context.Context, msgs []*driver.Message) error {
	b.active++
	b.mu.Unlock()
	defer func() { // also when SendBatch panics: the slot is not lost
		b.mu.Lock()
		if batch := b.next(); batch != nil {
			go b.run(batch)
		}
		b.mu.Unlock()
	}()
	return b.drv.SendBatch(ctx, b.topic, msgs)
}

// next is called by a sender whose send ended, with b.mu held: it returns
// the sender's next batch, or nil once nothing waits (the sender's slot is
// then free). Further full batches still waiting get sends of their own.
func (b *batcher) next() []*sendReq {
	if len(b.waiting) == 0 {
		b.active--
		return nil
	}
	batch := b.take()
	for b.startable() {
		b.active++
		go b.run(b.take())
	}
	return batch
}

// take removes whole requests from the queue up to maxBatch messages (at
// least one request). b.mu must be held.
func (b *batcher) take() []*sendReq {
	n, i := 0, 0
	for i < len(b.waiting) {
		if i > 0 && n+len(b.waiting[i].msgs) > b.maxBatch {
			break
		}
		n += len(b.waiting[i].msgs)
		i++
	}
	batch := b.waiting[:i:i]
	b.waiting = b.waiting[i:]
	b.waitingN -= n
	return batch
}

// sendAll sends the messages of every request in batch.
func (b *batcher) sendAll(batch []*sendReq) error {
	msgs := batch[0].msgs
	if len(batch) > 1 {
		n := 0
		for _, r := range batch {
			n += len(r.msgs)
		}
		msgs = make([]*driver.Message, 0, n)
		for _, r := range batch {
			msgs = append(msgs, r.msgs...)
		}
	}
	for _, r := range batch {
		if r.ctx.Done() == nil {
			// A caller that cannot give up keeps the send going anyway:
			// no cancellation to wire up.
			return b.drv.SendBatch(context.Background(), b.topic, msgs)
		}
	}
	// The send is cancelled only when every caller in the batch has
	// given up: one impatient caller must not fail the others. A caller
	// gives up (giveUp) on its own goroutine before its Publish returns, so
	// a send nobody waits for any more is cancelled by then.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var left atomic.Int32
	left.Store(int32(len(batch)))
	gone := func() {
		if left.Add(-1) == 0 {
			cancel()
		}
	}
	for _, r := range batch {
		r.mu.Lock()
		if r.gone {
			r.mu.Unlock()
			gone()
			continue
		}
		r.onGone = gone
		r.mu.Unlock()
	}
	err := ctx.Err() // every caller gave up already: send nothing
	if err == nil {
		err = b.drv.SendBatch(ctx, b.topic, msgs)
	}
	for _, r := range batch {
		r.mu.Lock()
		r.onGone = nil
		r.mu.Unlock()
	}
	return err
}

func (b *batcher) run(batch []*sendReq) {
	for {
		start := time.Now()
		err := b.sendAll(batch)
		took := time.Since(start)
		released := 0
		for _, r := range batch {
			released += len(r.msgs)
		}
		for _, r := range batch {
			r.done <- err
		}
		b.mu.Lock()
		if b.group {
			b.gather(released+b.waitingN, took)
		}
		batch = b.next()
		b.mu.Unlock()
		if batch == nil {
			return
		}
	}
}

// gatherMax bounds how long gather waits.
const gatherMax = 200 * time.Microsecond

// gather is the group commit's linger: before the next batch is cut, it
// waits until expect messages are queued — the callers the send just
// released, who come back with their next call, plus those that queued
// during the send — or a full batch is, for at most half the send's
// duration (capped at gatherMax). Without it a steady set of concurrent
// callers splits into alternating half batches, each waiting for the
// other's send. It blocks on a channel that the call queuing the awaited
// message closes (one wake-up, not one per call); it never spins. b.mu is
// held on entry and on return.
func (b *batcher) gather(expect int, took time.Duration) {
	want := min(expect, b.maxBatch)
	limit := min(took/2, gatherMax)
	if limit <= 0 || b.waitingN >= want {
		return
	}
	t := time.NewTimer(limit)
	defer t.Stop()
	ch := make(chan struct{})
	b.arrived, b.want = ch, want
	b.mu.Unlock()
	select {
	case <-ch:
	case <-t.C:
	}
	b.mu.Lock()
	if b.arrived == ch { // the timer ended it
		b.arrived = nil
	}
}
