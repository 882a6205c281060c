package nsq

import (
	"context"
	"errors"
	"fmt"
	"sync"

	gonsq "github.com/nsqio/go-nsq"
)

// errConnLost fails the commands that were waiting for an answer when a
// producer connection was lost (they may or may not have been stored).
var errConnLost = errors.New("connection to nsqd lost before it answered")

// errNoTLS: tls=true, but nsqd did not offer TLS in its IDENTIFY answer.
var errNoTLS = errors.New("nsqd does not offer TLS (start it with --tls-cert and --tls-key), refusing to go on in plain text")

// pconn is one producer connection: PUB and MPUB commands are pipelined
// and nsqd answers them in order, each with OK or an error frame. It is
// built on go-nsq's Conn rather than its Producer, which cannot be bound
// by a context and races with itself when it reconnects (go-nsq v1.1.0).
type pconn struct {
	conn *gonsq.Conn

	writeMu sync.Mutex // a command's place in pending is its place on the wire

	mu      sync.Mutex
	pending []chan error
	dead    error // why the connection is unusable, nil while it is good
}

// dialProducer makes a producer connection (dial, IDENTIFY, TLS, AUTH)
// bounded by ctx and ConnectTimeout.
func (b *Broker) dialProducer(ctx context.Context) (*pconn, error) {
	pc := &pconn{}
	pc.conn = gonsq.NewConn(b.addr, b.cfg, pc)
	pc.conn.SetLogger(newLogBridge(b.log, "producer"), gonsq.LogLevelWarning, "(%s)")
	if err := b.connectConn(ctx, pc.conn, nil); err != nil {
		return nil, err
	}
	return pc, nil
}

// connectConn runs conn.Connect and then, if not nil, then(), bounded by
// ctx and ConnectTimeout (go-nsq's handshake itself waits up to its read
// timeout, 2×Heartbeat). On failure the connection is closed, once the
// handshake returned.
func (b *Broker) connectConn(ctx context.Context, conn *gonsq.Conn, then func() error) error {
	return b.run(ctx, func() error {
		resp, err := conn.Connect()
		if err != nil {
			return err
		}
		if b.opts.TLS != nil && (resp == nil || !resp.TLSv1) {
			// go-nsq carries on in plain text when nsqd has no TLS.
			return errNoTLS
		}
		if then != nil {
			return then()
		}
		return nil
	}, func() { conn.Close() })
}

// send writes cmd and returns the channel its answer arrives on.
func (pc *pconn) send(cmd *gonsq.Command) (<-chan error, error) {
	answer := make(chan error, 1)
	pc.writeMu.Lock()
	defer pc.writeMu.Unlock()
	pc.mu.Lock()
	if pc.dead != nil {
		err := pc.dead
		pc.mu.Unlock()
		return nil, err
	}
	pc.pending = append(pc.pending, answer)
	pc.mu.Unlock()
	// A failed write calls OnIOError, which fails every pending command,
	// this one included: its answer is on the channel.
	_ = pc.conn.WriteCommand(cmd)
	return answer, nil
}

// answer hands nsqd's answer to the oldest pending command.
func (pc *pconn) answer(err error) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if len(pc.pending) == 0 {
		return
	}
	pc.pending[0] <- err
	pc.pending[0] = nil
	pc.pending = pc.pending[1:]
}

// fail marks the connection unusable and fails every pending command.
func (pc *pconn) fail(err error) {
	pc.mu.Lock()
	if pc.dead == nil {
		pc.dead = err
	}
	for _, ch := range pc.pending {
		ch <- fmt.Errorf("%w: %v", errConnLost, err)
	}
	pc.pending = nil
	pc.mu.Unlock()
	pc.conn.Close()
}

func (pc *pconn) usable() bool {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	return pc.dead == nil
}

func (pc *pconn) close() { pc.fail(errors.New("producer closed")) }

// ConnDelegate of a producer connection.

func (pc *pconn) OnResponse(_ *gonsq.Conn, data []byte) {
	if string(data) == "OK" {
		pc.answer(nil)
	}
}
func (pc *pconn) OnError(_ *gonsq.Conn, data []byte) {
	pc.answer(gonsq.ErrProtocol{Reason: string(data)})
}
func (pc *pconn) OnMessage(*gonsq.Conn, *gonsq.Message)         {}
func (pc *pconn) OnMessageFinished(*gonsq.Conn, *gonsq.Message) {}
func (pc *pconn) OnMessageRequeued(*gonsq.Conn, *gonsq.Message) {}
func (pc *pconn) OnBackoff(*gonsq.Conn)                         {}
func (pc *pconn) OnContinue(*gonsq.Conn)                        {}
func (pc *pconn) OnResume(*gonsq.Conn)                          {}
func (pc *pconn) OnIOError(_ *gonsq.Conn, err error)            { pc.fail(err) }
func (pc *pconn) OnHeartbeat(*gonsq.Conn)                       {}
func (pc *pconn) OnClose(*gonsq.Conn)                           { pc.fail(errors.New("connection closed")) }

// slot is one place in the producer pool; its connection is redialed when
// it was lost.
type slot struct {
	mu sync.Mutex
	pc *pconn
}

// get returns the slot's connection, dialing a new one if there is none or
// the last one was lost.
func (s *slot) get(ctx context.Context, b *Broker) (*pconn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pc != nil && s.pc.usable() {
		return s.pc, nil
	}
	pc, err := b.dialProducer(ctx)
	if err != nil {
		return nil, err
	}
	s.pc = pc
	return pc, nil
}

func (s *slot) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pc != nil {
		s.pc.close()
	}
}
