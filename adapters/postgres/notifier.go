package postgres

import (
	"context"
	"sync"
	"time"
)

// notifier sends the wake-up NOTIFYs of published topics outside the
// publish transactions, one statement for every topic published since its
// previous one. While publishes run back to back that is one NOTIFY per
// round trip instead of one per publish, and publishing commits do not
// queue on PostgreSQL's notification lock. A NOTIFY is only a hint
// (subscriptions also poll every poll_interval), so a failed one is logged
// and not retried: the next publish sends another.
type notifier struct {
	b *Broker

	mu      sync.Mutex
	pending map[string]struct{}
	started bool
	stopped bool
	wake    chan struct{} // cap 1
	quit    chan struct{}
	done    chan struct{}
}

// notifyTimeout bounds one NOTIFY statement.
const notifyTimeout = 5 * time.Second

func newNotifier(b *Broker) *notifier {
	return &notifier{
		b:       b,
		pending: map[string]struct{}{},
		wake:    make(chan struct{}, 1),
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// add schedules a NOTIFY for topic; the first call starts the goroutine.
func (n *notifier) add(topic string) {
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return
	}
	n.pending[topic] = struct{}{}
	if !n.started {
		n.started = true
		go n.run()
	}
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *notifier) take() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.pending) == 0 {
		return nil
	}
	topics := make([]string, 0, len(n.pending))
	for t := range n.pending {
		topics = append(topics, t)
	}
	clear(n.pending)
	return topics
}

func (n *notifier) run() {
	defer close(n.done)
	for {
		select {
		case <-n.wake:
			n.send(n.take())
		case <-n.quit:
			n.send(n.take()) // what the last publishes before Close scheduled
			return
		}
	}
}

func (n *notifier) send(topics []string) {
	if len(topics) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), notifyTimeout)
	defer cancel()
	if _, err := n.b.pool.Exec(ctx, `SELECT pg_notify($1, t) FROM unnest($2::text[]) AS t`, n.b.channel, topics); err != nil {
		n.b.log.Warn("omnibus: postgres NOTIFY after publish failed; subscribers of other processes find the messages at their next poll",
			"channel", n.b.channel, "topics", len(topics), "error", err)
	}
}

// stop sends what is pending and ends the goroutine.
func (n *notifier) stop() {
	n.mu.Lock()
	n.stopped = true
	started := n.started
	n.mu.Unlock()
	if started {
		close(n.quit)
		<-n.done
	}
}
