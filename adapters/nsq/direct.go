package nsq

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	gonsq "github.com/nsqio/go-nsq"

	"github.com/omnibusmq/omnibus/internal/backoff"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// directConn is a subscription's connection to the URL's nsqd when there is
// no lookupd (go-nsq's Consumer would redial it only every
// lookupd_poll_interval, with no backoff). It is its go-nsq ConnDelegate.
type directConn struct {
	s    *subscription
	conn *gonsq.Conn

	answer chan error // nsqd's answer to SUB

	lostOnce sync.Once
	lost     chan struct{} // closed on the first I/O error or close
	closed   chan struct{} // closed by OnClose: every delivery answered
}

func (d *directConn) send(err error) {
	select {
	case d.answer <- err:
	default:
	}
}

func (d *directConn) markLost() { d.lostOnce.Do(func() { close(d.lost) }) }

func (d *directConn) OnResponse(c *gonsq.Conn, data []byte) {
	switch string(data) {
	case "OK":
		d.send(nil)
	case "CLOSE_WAIT":
		// nsqd acknowledged CLS (closeDirect): it sends nothing more, so
		// close, as go-nsq's own consumer does; the connection ends once
		// every delivery on it is answered.
		_ = c.Close()
	}
}

func (d *directConn) OnError(_ *gonsq.Conn, data []byte) {
	d.send(fmt.Errorf("nsqd refused SUB: %s", data))
	// E_FIN_FAILED and the like: the delivery timed out and is redelivered.
	d.s.b.log.Warn("nsq: nsqd answered with an error", "topic", d.s.topic, "channel", d.s.channel, "error", string(data))
}

func (d *directConn) OnMessage(_ *gonsq.Conn, m *gonsq.Message) { _ = d.s.handle(m) }

func (d *directConn) OnMessageFinished(*gonsq.Conn, *gonsq.Message) {}
func (d *directConn) OnMessageRequeued(*gonsq.Conn, *gonsq.Message) {}
func (d *directConn) OnBackoff(*gonsq.Conn)                         {}
func (d *directConn) OnContinue(*gonsq.Conn)                        {}
func (d *directConn) OnResume(*gonsq.Conn)                          {}
func (d *directConn) OnHeartbeat(*gonsq.Conn)                       {}

// OnIOError starts closing the connection (go-nsq closes it only once asked
// to, after every delivery on it was answered) and has it redialed.
func (d *directConn) OnIOError(c *gonsq.Conn, err error) {
	d.send(err)
	d.markLost()
	c.Close()
}

func (d *directConn) OnClose(*gonsq.Conn) {
	d.send(errors.New("connection closed before nsqd answered SUB"))
	d.markLost()
	close(d.closed)
}

// dial connects to the URL's nsqd, subscribes, waits for nsqd's OK and
// sends RDY, bounded by ctx and ConnectTimeout.
func (s *subscription) dial(ctx context.Context) (*directConn, error) {
	b := s.b
	d := &directConn{s: s, answer: make(chan error, 1), lost: make(chan struct{}), closed: make(chan struct{})}
	d.conn = gonsq.NewConn(b.addr, s.cfg, d)
	lb := newLogBridge(b.log, "consumer "+s.topic+"/"+s.channel)
	lb.quiet = &s.quiet
	d.conn.SetLogger(lb, gonsq.LogLevelWarning, "(%s)")
	ctx, cancel := context.WithTimeout(ctx, b.opts.ConnectTimeout)
	defer cancel()
	if err := b.connectConn(ctx, d.conn, func() error { return d.conn.WriteCommand(gonsq.Subscribe(s.topic, s.channel)) }); err != nil {
		return nil, fmt.Errorf("nsq: subscribe %q/%q on %s: %w", s.topic, s.channel, b.addr, err)
	}
	var err error
	select {
	case err = <-d.answer:
	case <-ctx.Done():
		err = fmt.Errorf("no answer to SUB within %v: %w", b.opts.ConnectTimeout, ctx.Err())
	}
	if err == nil {
		err = d.conn.WriteCommand(gonsq.Ready(s.inFlight))
	}
	if err != nil {
		d.conn.Close()
		return nil, fmt.Errorf("nsq: subscribe %q/%q on %s: %w", s.topic, s.channel, b.addr, err)
	}
	return d, nil
}

// reconnectLoop redials the connection whenever it is lost, with
// exponential backoff (100ms doubling up to lookupd_poll_interval, at most
// 5s), until Close.
func (s *subscription) reconnectLoop(d *directConn) {
	defer close(s.loopDone)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	policy := backoff.Policy{Initial: 100 * time.Millisecond, Max: min(s.b.opts.LookupdPollInterval, 5*time.Second)}
	for {
		select {
		case <-d.lost:
		case <-ctx.Done():
			return
		}
		s.b.log.Warn("nsq: connection lost, reconnecting", "nsqd", s.b.addr, "topic", s.topic, "channel", s.channel)
		for n := 1; ; n++ {
			if !policy.Sleep(ctx, n) {
				return
			}
			next, err := s.dial(ctx)
			if err == nil {
				d = next
				break
			}
			if ctx.Err() != nil {
				return
			}
			level := "retrying"
			if errors.Is(err, driver.ErrPermanent) {
				level = "retrying (the error looks permanent)"
			}
			s.b.log.Warn("nsq: reconnect failed, "+level, "nsqd", s.b.addr, "topic", s.topic, "channel", s.channel, "attempt", n, "error", err)
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			d.conn.Close()
			return
		}
		s.cur = d
		s.mu.Unlock()
		s.b.log.Info("nsq: reconnected", "nsqd", s.b.addr, "topic", s.topic, "channel", s.channel)
	}
}

// closeDirect stops redialing, requeues held (REQ on each delivery's own
// connection), then asks nsqd to stop sending (CLS) and waits up to
// ConnectTimeout for the connection to close.
func (s *subscription) closeDirect(held map[*gonsq.Message]struct{}) {
	<-s.loopDone
	for m := range held {
		m.RequeueWithoutBackoff(0)
	}
	s.mu.Lock()
	d := s.cur
	s.mu.Unlock()
	_ = d.conn.WriteCommand(gonsq.StartClose())
	t := time.NewTimer(s.b.opts.ConnectTimeout)
	defer t.Stop()
	select {
	case <-d.closed:
	case <-t.C:
		s.b.log.Warn("nsq: connection did not close in time", "topic", s.topic, "channel", s.channel, "timeout", s.b.opts.ConnectTimeout)
		d.conn.Close()
	}
}
