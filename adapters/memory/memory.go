// Package memory is the in-process broker behind mem:// URLs: the embedded
// default used by the demo, unit tests and services that need no server.
//
// Semantics (see docs/adapters.md):
//
//   - Brokers are named by the URL host: mem:// is the process-wide broker
//     "default", mem://orders another one. Every client opened with the same
//     name shares that broker; it lives until the last such client closes.
//   - Each (topic, group) has one FIFO queue; members of a group compete for
//     it, distinct groups each get every message published after the group
//     was first subscribed. A topic that has no named group yet holds what is
//     published to it and hands it to the first named group that subscribes,
//     so nothing published before the consumer starts is lost (a dead-letter
//     topic nobody reads keeps its messages). An anonymous subscription (no
//     Group) only sees what is published while it is open.
//   - Backpressure: a queue holds at most buffer messages not yet acked
//     (ready, in flight or delayed; ?buffer=, default 10000). Publish blocks,
//     honouring its context, while any queue of the topic is full.
//   - Ack removes a delivery; Nack(delay) puts it back at the head of its
//     queue after delay; closing a subscription puts back everything it had
//     not acked. Attempt counts deliveries.
//   - Nothing survives the process: Capabilities.Persistence is false.
package memory

import (
	"context"
	"fmt"
	"maps"
	"net/url"
	"sync"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Scheme is the URL scheme of this adapter.
const Scheme = "mem"

func init() { pubsub.Register(Scheme, openURL) }

// Options configure a memory broker. Zero values mean the defaults.
type Options struct {
	// Buffer is the most unacked messages one (topic, group) queue holds
	// before Publish blocks. Default 10000.
	Buffer int
	// MaxMessageSize is the largest payload accepted, in bytes.
	// Default 16 MiB.
	MaxMessageSize int
}

func (o Options) withDefaults() Options {
	if o.Buffer <= 0 {
		o.Buffer = 10000
	}
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = 16 << 20
	}
	return o
}

var named = struct {
	sync.Mutex
	m map[string]*broker
}{m: map[string]*broker{}}

func openURL(ctx context.Context, raw string) (driver.Broker, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Parse's error quotes parts of the URL: name none.
		return nil, fmt.Errorf("mem: cannot parse the URL: %w", driver.ErrInvalid)
	}
	if err := driver.CheckURL("mem", raw, u); err != nil {
		return nil, err
	}
	p := driver.NewParams(Scheme, u.Query())
	opts := Options{
		Buffer:         p.Int("buffer", 0, 1, 1<<30),
		MaxMessageSize: p.Int("max_message_size", 0, 1, 1<<30),
	}
	if err := p.Err(); err != nil {
		return nil, err
	}
	name := u.Host
	if name == "" {
		name = u.Opaque
	}
	if name == "" {
		name = "default"
	}
	return Shared(name, opts)
}

// Shared returns a connection to the process-wide broker called name,
// creating it with opts if it does not exist. It fails if the broker exists
// with different options.
func Shared(name string, opts Options) (*Conn, error) {
	opts = opts.withDefaults()
	named.Lock()
	defer named.Unlock()
	b := named.m[name]
	if b == nil {
		b = newBroker(opts)
		b.name = name
		named.m[name] = b
	} else if b.opts != opts {
		return nil, fmt.Errorf("mem: broker %q is already open with buffer=%d max_message_size=%d, not buffer=%d max_message_size=%d: %w",
			name, b.opts.Buffer, b.opts.MaxMessageSize, opts.Buffer, opts.MaxMessageSize, driver.ErrInvalid)
	}
	b.refs++
	return &Conn{b: b}, nil
}

// New returns a connection to a new private broker (not reachable by URL).
func New(opts Options) *Conn {
	b := newBroker(opts.withDefaults())
	b.refs = 1
	return &Conn{b: b}
}

// NewClient returns a portable client on a new private broker.
func NewClient(opts Options) *pubsub.Client { return pubsub.NewClient(New(opts)) }

// Conn is one client's handle on a memory broker; it implements driver.Broker.
type Conn struct {
	b      *broker
	mu     sync.Mutex
	closed bool
}

type broker struct {
	name   string
	opts   Options
	mu     sync.Mutex
	refs   int
	closed bool
	topics map[string]*topic
	pubSeq uint64 // publish order
	anon   uint64
	timers map[*time.Timer]struct{}
}

type topic struct {
	groups  map[string]*group
	backlog *group // holds messages while no named group exists
}

type group struct {
	name    string
	anon    bool
	ready   []*entry // FIFO; ready[head:] wait, ready[head] is next
	head    int
	unacked int // ready + in flight + delayed
	members int
	notify  chan struct{} // closed when messages become ready
	space   chan struct{} // closed when unacked drops below the buffer
	// Whether a receiver (a publisher) took notify (space) to wait on it
	// since it was last closed: only then is it closed and replaced, so
	// that a busy queue does not allocate a channel per publish or ack.
	readersWait, writersWait bool
}

// entry is one message in one group's queue. Entries are allocated per
// published batch (a slice of structs), and one in flight is linked into
// its subscription's in-flight list: no allocation and no map operation per
// message.
type entry struct {
	msg     *driver.Message // immutable, shared by groups
	seq     uint64          // publish order
	attempt int
	// In-flight list of the subscription holding the delivery (nil when
	// ready or delayed); guarded by the broker's mutex.
	holder     *sub
	prev, next *entry
}

// readyLen is how many messages wait in the queue.
func (g *group) readyLen() int { return len(g.ready) - g.head }

// push appends e to the queue.
func (g *group) push(e *entry) {
	if g.head > 0 && len(g.ready) == cap(g.ready) && g.head >= len(g.ready)/2 {
		// Slide the live part down instead of growing.
		n := copy(g.ready, g.ready[g.head:])
		clear(g.ready[n:])
		g.ready, g.head = g.ready[:n], 0
	}
	g.ready = append(g.ready, e)
}

// pushFront puts es (in order) at the head of the queue.
func (g *group) pushFront(es []*entry) {
	if len(es) <= g.head {
		g.head -= len(es)
		copy(g.ready[g.head:], es)
		return
	}
	ready := make([]*entry, 0, len(es)+g.readyLen()+16)
	ready = append(append(ready, es...), g.ready[g.head:]...)
	g.ready, g.head = ready, 0
}

func newBroker(opts Options) *broker {
	return &broker{opts: opts, topics: map[string]*topic{}, timers: map[*time.Timer]struct{}{}}
}

func newGroup(name string, anon bool) *group {
	return &group{name: name, anon: anon, notify: make(chan struct{}), space: make(chan struct{})}
}

func (g *group) wakeReaders() {
	close(g.notify)
	g.notify = make(chan struct{})
	g.readersWait = false
}

func (g *group) wakeWriters() {
	close(g.space)
	g.space = make(chan struct{})
	g.writersWait = false
}

// readersReady wakes receivers waiting for messages, if any.
func (g *group) readersReady() {
	if g.readersWait {
		g.wakeReaders()
	}
}

// writersRoom wakes publishers waiting for room, if any.
func (g *group) writersRoom() {
	if g.writersWait {
		g.wakeWriters()
	}
}

func (b *broker) topic(name string) *topic {
	t := b.topics[name]
	if t == nil {
		t = &topic{groups: map[string]*group{}}
		b.topics[name] = t
	}
	return t
}

// Capabilities implements driver.Broker.
func (c *Conn) Capabilities() driver.Capabilities {
	return driver.Capabilities{
		OrderingPerKey: true,
		Persistence:    false,
		NackDelay:      true,
		Replay:         false,
		Groups:         true,
		AttemptCount:   true,
		MaxMessageSize: c.b.opts.MaxMessageSize,
		Broker:         "memory",
	}
}

// Traits implements driver.Broker: sends are memory copies, so large
// batches and two senders per topic are cheap; an ack is bookkeeping under
// the broker's lock, cheaper than a hand-off to the portable layer's ack
// loop (InlineAcks).
func (c *Conn) Traits() driver.Traits {
	return driver.Traits{MaxSendBatch: 1000, MaxConcurrentSends: 2, InlineAcks: true}
}

func (c *Conn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// SendBatch implements driver.Broker.
//
// Every payload and metadata map is copied, so a caller changing its
// message after Publish returns cannot change what is delivered. The
// Message structs themselves are kept (driver.Broker allows it: the
// portable layer allocates them per call for the driver).
func (c *Conn) SendBatch(ctx context.Context, topicName string, msgs []*driver.Message) error {
	now := time.Now()
	copies := msgs // the slice is ours too (driver.Broker)
	for _, m := range msgs {
		payload, meta := m.Payload, m.Metadata
		*m = driver.Message{ID: m.ID, Key: m.Key, Topic: topicName, PublishedAt: now, Payload: append([]byte{}, payload...)}
		if meta != nil {
			m.Metadata = maps.Clone(meta)
		}
	}
	b := c.b
	for len(copies) > 0 {
		if c.isClosed() {
			return fmt.Errorf("mem: publish to %q: %w", topicName, driver.ErrClosed)
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return fmt.Errorf("mem: publish to %q: %w", topicName, driver.ErrClosed)
		}
		t := b.topic(topicName)
		targets := t.targets()
		// Room is what the fullest queue can still take.
		room := len(copies)
		var full *group
		for _, g := range targets {
			if r := b.opts.Buffer - g.unacked; r < room {
				room, full = r, g
			}
		}
		if room <= 0 {
			wait := full.space
			full.writersWait = true
			b.mu.Unlock()
			select {
			case <-wait:
				if ctx.Err() == nil {
					continue
				}
				// Both ready: a publisher that gave up publishes nothing more.
			case <-ctx.Done():
			}
			return fmt.Errorf("mem: publish to %q: queue of group %q is full (buffer=%d): %w", topicName, full.name, b.opts.Buffer, ctx.Err())
		}
		first := b.pubSeq
		b.pubSeq += uint64(room)
		for _, g := range targets {
			es := make([]entry, room) // one allocation per batch and group
			for i, m := range copies[:room] {
				e := &es[i]
				e.msg, e.seq = m, first+uint64(i)
				g.push(e)
			}
			g.unacked += room
			g.readersReady()
		}
		copies = copies[room:]
		b.mu.Unlock()
	}
	return nil
}

// targets returns the queues a publish goes to: every group, or the
// backlog while no named group exists.
func (t *topic) targets() []*group {
	gs := make([]*group, 0, len(t.groups)+1)
	named := false
	for _, g := range t.groups {
		gs = append(gs, g)
		if !g.anon {
			named = true
		}
	}
	if !named {
		if t.backlog == nil {
			t.backlog = newGroup("(no group yet)", false)
		}
		gs = append(gs, t.backlog)
	}
	return gs
}

// OpenSubscription implements driver.Broker.
func (c *Conn) OpenSubscription(ctx context.Context, topicName string, opts driver.SubscriptionOptions) (driver.Subscription, error) {
	if c.isClosed() {
		return nil, fmt.Errorf("mem: subscribe to %q: %w", topicName, driver.ErrClosed)
	}
	b := c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, fmt.Errorf("mem: subscribe to %q: %w", topicName, driver.ErrClosed)
	}
	t := b.topic(topicName)
	name, anon := opts.Group, false
	if name == "" {
		b.anon++
		name, anon = fmt.Sprintf("\x00anon-%d", b.anon), true
	}
	g := t.groups[name]
	if g == nil {
		g = newGroup(name, anon)
		if !anon && t.backlog != nil {
			// The first named group inherits what was published before it.
			g.ready, g.head, g.unacked = t.backlog.ready, t.backlog.head, t.backlog.unacked
			t.backlog.wakeWriters()
			t.backlog = nil
		}
		t.groups[name] = g
	}
	g.members++
	return &sub{c: c, t: t, g: g, topic: topicName}, nil
}

// Close implements driver.Broker. The shared broker is released when its
// last client closes.
func (c *Conn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	b := c.b
	if b.name != "" {
		named.Lock()
		defer named.Unlock()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refs--
	if b.refs > 0 {
		return nil
	}
	b.closed = true
	for tm := range b.timers {
		tm.Stop()
	}
	for _, t := range b.topics {
		for _, g := range t.groups {
			g.wakeReaders()
			g.wakeWriters()
		}
		if t.backlog != nil {
			t.backlog.wakeWriters()
		}
	}
	if b.name != "" && named.m[b.name] == b {
		delete(named.m, b.name)
	}
	return nil
}

type sub struct {
	c     *Conn
	t     *topic
	g     *group
	topic string
	// inflight is the list of entries delivered and not yet settled
	// (guarded by the broker's mutex); an entry is its own ack ID.
	inflight *entry
	closed   bool
	// What ReceiveBatch returns, reused by the next call (driver
	// contract); only ReceiveBatch touches them.
	scratch    []driver.Message
	scratchPtr []*driver.Message
}

// hold links e into s's in-flight list. b.mu must be held.
func (s *sub) hold(e *entry) {
	e.holder, e.prev, e.next = s, nil, s.inflight
	if s.inflight != nil {
		s.inflight.prev = e
	}
	s.inflight = e
}

// unhold removes e from s's in-flight list and reports whether it was
// there (a settled or given-back delivery is not). b.mu must be held.
func (s *sub) unhold(id driver.AckID) (*entry, bool) {
	e, _ := id.(*entry)
	if e == nil || e.holder != s {
		return nil, false
	}
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		s.inflight = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	}
	e.holder, e.prev, e.next = nil, nil, nil
	return e, true
}

// ReceiveBatch implements driver.Subscription.
func (s *sub) ReceiveBatch(ctx context.Context, max int) ([]*driver.Message, error) {
	b := s.c.b
	for {
		b.mu.Lock()
		if s.closed || b.closed {
			b.mu.Unlock()
			return nil, fmt.Errorf("mem: receive from %q: %w", s.topic, driver.ErrClosed)
		}
		g := s.g
		if n := min(max, g.readyLen()); n > 0 {
			if cap(s.scratch) < n {
				s.scratch = make([]driver.Message, n)
				s.scratchPtr = make([]*driver.Message, n)
			}
			arr, out := s.scratch[:n], s.scratchPtr[:n]
			for i, e := range g.ready[g.head : g.head+n] {
				e.attempt++
				s.hold(e)
				m := &arr[i]
				*m = *e.msg
				m.Attempt = e.attempt
				m.AckID = e // a pointer: no allocation to box it
				if e.msg.Metadata != nil {
					// Each delivery gets its own map: a handler changing
					// it cannot change what other groups or a
					// redelivery see.
					m.Metadata = make(map[string]string, len(e.msg.Metadata))
					for k, v := range e.msg.Metadata {
						m.Metadata[k] = v
					}
				}
				out[i] = m
			}
			clear(g.ready[g.head : g.head+n])
			g.head += n
			if g.head == len(g.ready) {
				g.ready, g.head = g.ready[:0], 0
			}
			b.mu.Unlock()
			return out, nil
		}
		wait := g.notify
		g.readersWait = true
		b.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// SendAcks implements driver.Subscription; with Traits.InlineAcks the
// portable layer calls it from Delivery.Ack, one delivery at a time.
func (s *sub) SendAcks(ctx context.Context, ids []driver.AckID) error {
	b := s.c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, id := range ids {
		if _, ok := s.unhold(id); ok {
			s.g.unacked--
		}
	}
	s.g.writersRoom()
	return nil
}

// SendNacks implements driver.Subscription.
func (s *sub) SendNacks(ctx context.Context, ids []driver.AckID, delay time.Duration) error {
	b := s.c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	var back []*entry
	for _, id := range ids {
		if e, ok := s.unhold(id); ok {
			back = append(back, e)
		}
	}
	b.requeue(s.g, back, delay)
	return nil
}

// requeue puts entries back at the head of g's queue, now or after delay.
// b.mu must be held.
func (b *broker) requeue(g *group, back []*entry, delay time.Duration) {
	if len(back) == 0 || b.closed {
		return
	}
	if delay <= 0 {
		g.pushFront(back)
		g.readersReady()
		return
	}
	var tm *time.Timer
	tm = time.AfterFunc(delay, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(b.timers, tm)
		b.requeue(g, back, 0)
	})
	b.timers[tm] = struct{}{}
}

// Close implements driver.Subscription: unacked deliveries go back to the
// head of the group's queue for its other (or next) members.
func (s *sub) Close() error {
	b := s.c.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var back []*entry
	for e := s.inflight; e != nil; {
		next := e.next
		e.holder, e.prev, e.next = nil, nil, nil
		back = append(back, e)
		e = next
	}
	// Keep publish order among what goes back.
	sortEntries(back)
	s.inflight = nil
	s.g.members--
	if s.g.anon && s.g.members == 0 {
		delete(s.t.groups, s.g.name)
		s.g.wakeWriters()
		return nil
	}
	b.requeue(s.g, back, 0)
	s.g.wakeReaders()
	return nil
}

// Open connects to the broker at url and returns a portable client: the
// same as pubsub.Open with this adapter's scheme (mem://); a URL of
// another scheme is an error wrapping pubsub.ErrInvalid.
func Open(ctx context.Context, url string) (*pubsub.Client, error) {
	return pubsub.OpenScheme(ctx, url, Scheme)
}
