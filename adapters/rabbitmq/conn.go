package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/omnibusmq/omnibus/internal/backoff"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// connMgr owns one AMQP connection and keeps it up: when the broker closes it
// or the network drops, it redials with exponential backoff and full jitter
// until it succeeds or the Broker closes. Users fetch the current connection
// with get and notice a new one by its generation.
type connMgr struct {
	b    *Broker
	role string

	mu      sync.Mutex
	conn    *amqp.Connection
	gen     uint64
	ready   chan struct{} // closed while conn != nil
	started bool
	closed  bool
	done    chan struct{}
	wg      sync.WaitGroup

	admin    *amqp.Channel // for declarations; reopened when a channel error closed it
	adminGen uint64
	adminMu  sync.Mutex
}

func newConnMgr(b *Broker, role string) *connMgr {
	return &connMgr{b: b, role: role, ready: make(chan struct{}), done: make(chan struct{})}
}

// start installs the first connection and watches it.
func (m *connMgr) start(c *amqp.Connection) {
	m.mu.Lock()
	m.started = true
	m.conn = c
	m.gen = 1
	close(m.ready)
	m.mu.Unlock()
	m.wg.Add(1)
	go m.watch(c)
}

// get returns the current connection and its generation, waiting (bounded
// by ctx) while a reconnect is under way. The consume connection is dialed
// on first use.
func (m *connMgr) get(ctx context.Context) (*amqp.Connection, uint64, error) {
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return nil, 0, fmt.Errorf("rabbitmq: %w", driver.ErrClosed)
		}
		if !m.started {
			m.mu.Unlock()
			c, err := m.b.dial(ctx, m.role)
			if err != nil {
				return nil, 0, err
			}
			m.mu.Lock()
			if m.started || m.closed {
				m.mu.Unlock()
				c.Close()
				continue
			}
			m.mu.Unlock()
			m.start(c)
			continue
		}
		if m.conn != nil && !m.conn.IsClosed() {
			c, g := m.conn, m.gen
			m.mu.Unlock()
			return c, g, nil
		}
		ready := m.ready
		if m.conn != nil {
			// Closed but the watcher has not noticed yet: wait for it.
			ready = nil
		}
		m.mu.Unlock()
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ready:
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, 0, fmt.Errorf("rabbitmq: waiting for the %s connection to %s: %w", m.role, m.b.addr, ctx.Err())
		case <-m.done:
		}
		t.Stop()
	}
}

func (m *connMgr) watch(c *amqp.Connection) {
	defer m.wg.Done()
	log := m.b.opts.Logger
	for {
		closes := c.NotifyClose(make(chan *amqp.Error, 1))
		var cause error
		select {
		case e := <-closes:
			if e != nil {
				cause = e
			} else {
				cause = errors.New("connection closed")
			}
		case <-m.done:
			return
		}
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return
		}
		m.conn = nil
		m.ready = make(chan struct{})
		m.mu.Unlock()
		lost := time.Now()
		log.Warn("omnibus rabbitmq: connection lost, reconnecting", "role", m.role, "broker", m.b.addr, "error", cause)
		retry := backoff.Policy{Initial: m.b.opts.ReconnectMin, Max: m.b.opts.ReconnectMax}
		attempts := 0
		for {
			// Full jitter: sleep a random time in [0, min(max, min×2^n)].
			t := time.NewTimer(retry.Delay(attempts + 1))
			select {
			case <-t.C:
			case <-m.done:
				t.Stop()
				return
			}
			attempts++
			ctx, cancel := context.WithTimeout(context.Background(), m.b.opts.ConnectionTimeout)
			nc, err := m.b.dial(ctx, m.role)
			cancel()
			if err == nil {
				c = nc
				break
			}
			log.Debug("omnibus rabbitmq: reconnect failed", "role", m.role, "broker", m.b.addr, "attempt", attempts, "error", err)
		}
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			c.Close()
			return
		}
		m.conn = c
		m.gen++
		close(m.ready)
		m.mu.Unlock()
		m.b.reconnects.Add(1)
		log.Info("omnibus rabbitmq: reconnected", "role", m.role, "broker", m.b.addr, "attempts", attempts, "down_for", time.Since(lost).Round(time.Millisecond))
	}
}

// channel opens a new channel on the current connection.
func (m *connMgr) channel(ctx context.Context) (*amqp.Channel, uint64, error) {
	c, gen, err := m.get(ctx)
	if err != nil {
		return nil, 0, err
	}
	ch, err := c.Channel()
	if err != nil {
		return nil, 0, fmt.Errorf("rabbitmq: open channel on the %s connection: %w", m.role, err)
	}
	return ch, gen, nil
}

// withAdmin runs fn on the shared declaration channel, reopening it when a
// channel error (such as a failed declaration) closed it. It returns the
// connection generation fn ran on.
func (m *connMgr) withAdmin(ctx context.Context, fn func(ch *amqp.Channel) error) (uint64, error) {
	m.adminMu.Lock()
	defer m.adminMu.Unlock()
	if m.admin == nil || m.admin.IsClosed() {
		ch, gen, err := m.channel(ctx)
		if err != nil {
			return 0, err
		}
		m.admin, m.adminGen = ch, gen
	}
	err := fn(m.admin)
	return m.adminGen, err
}

func (m *connMgr) close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	c := m.conn
	close(m.done)
	m.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
	m.wg.Wait()
}
