package postgres

import (
	"github.com/omnibusmq/omnibus/internal/backoff"

	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// listener holds one LISTEN connection per Broker and wakes the
// subscriptions of the topic named in each notification. It starts with the
// first subscription and reconnects with backoff when the connection drops;
// subscriptions poll meanwhile, and are all woken after a reconnect in case
// a notification was missed.
type listener struct {
	b *Broker

	mu      sync.Mutex
	subs    map[string]map[*subscription]struct{}
	cancel  context.CancelFunc
	done    chan struct{}
	stopped bool
}

func newListener(b *Broker) *listener {
	return &listener{b: b, subs: map[string]map[*subscription]struct{}{}}
}

func (l *listener) add(s *subscription) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return
	}
	m := l.subs[s.topic]
	if m == nil {
		m = map[*subscription]struct{}{}
		l.subs[s.topic] = m
	}
	m[s] = struct{}{}
	if l.cancel == nil {
		ctx, cancel := context.WithCancel(context.Background())
		l.cancel, l.done = cancel, make(chan struct{})
		go l.run(ctx)
	}
}

func (l *listener) remove(s *subscription) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m := l.subs[s.topic]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(l.subs, s.topic)
		}
	}
}

func (l *listener) stop() {
	l.mu.Lock()
	l.stopped = true
	cancel, done := l.cancel, l.done
	l.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

func (l *listener) wakeTopic(topic string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for s := range l.subs[topic] {
		s.poke()
	}
}

func (l *listener) wakeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.subs {
		for s := range m {
			s.poke()
		}
	}
}

func (l *listener) run(ctx context.Context) {
	defer close(l.done)
	retry := backoff.Policy{Initial: 100 * time.Millisecond, Max: 10 * time.Second}
	failures := 0
	for ctx.Err() == nil {
		err := l.listenOnce(ctx, func() { failures = 0 })
		if ctx.Err() != nil {
			return
		}
		failures++
		l.b.log.Warn("omnibus: postgres listen connection lost; polling until it is back",
			"channel", l.b.channel, "error", err, "failures", failures)
		if !retry.Sleep(ctx, failures) {
			return
		}
	}
}

func (l *listener) listenOnce(ctx context.Context, connected func()) error {
	conn, err := pgx.ConnectConfig(ctx, l.b.pool.Config().ConnConfig)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{l.b.channel}.Sanitize()); err != nil {
		return err
	}
	connected()
	l.wakeAll()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		l.wakeTopic(n.Payload)
	}
}
