package kafka

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	apiVersionsAPI "github.com/segmentio/kafka-go/protocol/apiversions"
	saslAuthAPI "github.com/segmentio/kafka-go/protocol/saslauthenticate"
	saslHandshakeAPI "github.com/segmentio/kafka-go/protocol/saslhandshake"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Produce versions producewire.go writes and reads; Kafka 4 accepts 3 and
// later.
const (
	minProduceVersion = 3
	maxProduceVersion = 8
)

// produceIdleMax is how long an idle produce connection is kept: below the
// broker's connections.max.idle.ms (10 minutes by default), so a connection
// taken from the pool has not been closed by the broker for idleness.
const produceIdleMax = 5 * time.Minute

// maxIdleProduceConns bounds the idle produce connections kept per broker.
const maxIdleProduceConns = 16

// produceConns keeps open connections for produce requests, per broker
// address. A produce request is written and its answer read by the sending
// goroutine itself on a connection it holds alone: no hand-off to a
// connection goroutine and back, which is most of a small request's client
// side on loopback (measured: docs/benchmarks.md). Requests are encoded and
// answers parsed by producewire.go, versions 3–8 (agreed per connection);
// kafka-go's protocol package serves only the handshake (ApiVersions,
// SASL). A connection that failed an exchange is closed, never reused.
type produceConns struct {
	opts Options

	mu     sync.Mutex
	closed bool
	idle   map[string][]*produceConn
}

type produceConn struct {
	nc      net.Conn
	r       *bufio.Reader // answers
	rbuf    []byte        // the last answer's body
	version int16         // produce request version
	corr    int32         // correlation ID of the last request
	used    time.Time
	spoiled bool // an ended context set a past deadline on nc
}

// get returns an idle connection to addr or dials a new one.
func (p *produceConns) get(ctx context.Context, addr string) (*produceConn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, driver.ErrClosed
	}
	for q := p.idle[addr]; len(q) > 0; q = p.idle[addr] {
		c := q[len(q)-1]
		p.idle[addr] = q[:len(q)-1]
		if time.Since(c.used) < produceIdleMax {
			p.mu.Unlock()
			return c, nil
		}
		_ = c.nc.Close()
	}
	p.mu.Unlock()
	return p.dial(ctx, addr)
}

// release ends the use of c: a healthy connection goes back to the pool,
// one that failed an exchange (healthy false) or whose exchange an ended
// context interrupted is closed.
func (p *produceConns) release(addr string, c *produceConn, healthy bool) {
	c.used = time.Now()
	p.mu.Lock()
	if healthy && !c.spoiled && !p.closed && len(p.idle[addr]) < maxIdleProduceConns {
		p.idle[addr] = append(p.idle[addr], c)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	_ = c.nc.Close()
}

// close closes every idle connection; connections in use are closed when
// they are released.
func (p *produceConns) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for addr, q := range p.idle {
		for _, c := range q {
			_ = c.nc.Close()
		}
		delete(p.idle, addr)
	}
}

// dial connects to addr with the Options' TLS and SASL, and agrees on the
// produce version.
func (p *produceConns) dial(ctx context.Context, addr string) (*produceConn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.opts.DialTimeout)
	defer cancel()
	d := net.Dialer{KeepAlive: 30 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c, err := p.handshake(ctx, nc, addr)
	if err != nil {
		_ = nc.Close()
		return nil, err
	}
	return c, nil
}

func (p *produceConns) handshake(ctx context.Context, nc net.Conn, addr string) (*produceConn, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	if p.opts.TLS != nil {
		cfg := p.opts.TLS.Clone()
		if cfg.ServerName == "" {
			host, _, _ := net.SplitHostPort(addr)
			cfg.ServerName = host
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("TLS handshake with %s: %w", addr, err)
		}
		nc = tc
	}
	pc := protocol.NewConn(nc, p.opts.ClientID)
	pc.SetVersions(map[protocol.ApiKey]int16{protocol.ApiVersions: 0})
	m, err := pc.RoundTrip(&apiVersionsAPI.Request{})
	if err != nil {
		return nil, fmt.Errorf("api versions from %s: %w", addr, err)
	}
	res, ok := m.(*apiVersionsAPI.Response)
	if !ok {
		return nil, fmt.Errorf("api versions from %s: unexpected response %T", addr, m)
	}
	if res.ErrorCode != 0 {
		return nil, fmt.Errorf("api versions from %s: %w", addr, kafkago.Error(res.ErrorCode))
	}
	version := int16(-1)
	for _, k := range res.ApiKeys {
		if protocol.ApiKey(k.ApiKey) == protocol.Produce && k.MinVersion <= maxProduceVersion && k.MaxVersion >= minProduceVersion {
			version = min(k.MaxVersion, maxProduceVersion)
		}
	}
	if version < 0 {
		return nil, fmt.Errorf("broker %s supports no produce version in %d..%d: %w", addr, minProduceVersion, maxProduceVersion, kafkago.UnsupportedVersion)
	}
	pc.SetVersions(map[protocol.ApiKey]int16{
		protocol.Produce: version, protocol.SaslHandshake: 1, protocol.SaslAuthenticate: 0,
	})
	if p.opts.SASL != nil {
		if err := authenticate(ctx, pc, p.opts); err != nil {
			return nil, err
		}
	}
	_ = nc.SetDeadline(time.Time{})
	// Requests and answers alternate, so pc's reader holds nothing more:
	// from here on requests are written and answers read directly.
	return &produceConn{nc: nc, r: bufio.NewReaderSize(nc, 4096), version: version, corr: 1 << 16}, nil
}

// authenticate runs the SASL exchange of p.opts.SASL on pc. Errors name the
// mechanism, never the credentials.
func authenticate(ctx context.Context, pc *protocol.Conn, o Options) error {
	mech := o.SASL.Name()
	m, err := pc.RoundTrip(&saslHandshakeAPI.Request{Mechanism: mech})
	if err != nil {
		return fmt.Errorf("SASL %s handshake: %w", mech, err)
	}
	if hs, ok := m.(*saslHandshakeAPI.Response); !ok {
		return fmt.Errorf("SASL %s handshake: unexpected response %T", mech, m)
	} else if hs.ErrorCode != 0 {
		return fmt.Errorf("SASL %s handshake (broker offers %v): %w", mech, hs.Mechanisms, kafkago.Error(hs.ErrorCode))
	}
	state, out, err := o.SASL.Start(ctx)
	if err != nil {
		return fmt.Errorf("SASL %s: %w", mech, err)
	}
	for {
		m, err := pc.RoundTrip(&saslAuthAPI.Request{AuthBytes: out})
		if err != nil {
			return fmt.Errorf("SASL %s authenticate: %w", mech, err)
		}
		res, ok := m.(*saslAuthAPI.Response)
		if !ok {
			return fmt.Errorf("SASL %s authenticate: unexpected response %T", mech, m)
		}
		if res.ErrorCode != 0 {
			return fmt.Errorf("SASL %s authenticate: %w", mech, kafkago.Error(res.ErrorCode))
		}
		done, next, err := state.Next(ctx, res.AuthBytes)
		if err != nil {
			return fmt.Errorf("SASL %s: %w", mech, err)
		}
		if done {
			return nil
		}
		out = next
	}
}

// exchange writes the request req (size first) and returns the body of its
// answer (after the size), valid until the next exchange. The connection's
// deadline is the context's, and an ended context interrupts the exchange
// (and spoils the connection); after an error the connection must not be
// reused.
func (c *produceConn) exchange(ctx context.Context, req []byte) ([]byte, error) {
	dl, _ := ctx.Deadline()
	_ = c.nc.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = c.nc.SetDeadline(time.Unix(1, 0)) })
	body, err := c.writeRead(req)
	if !stop() {
		// The context ended during the exchange: an answer read in full
		// stands, but the connection now has a past deadline.
		c.spoiled = true
	}
	return body, err
}

func (c *produceConn) writeRead(req []byte) ([]byte, error) {
	if _, err := c.nc.Write(req); err != nil {
		return nil, err
	}
	var size [4]byte
	if _, err := io.ReadFull(c.r, size[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(size[:]))
	if n < 4 || n > maxResponse {
		return nil, fmt.Errorf("%w: size %d", errMalformed, n)
	}
	if cap(c.rbuf) < n {
		c.rbuf = make([]byte, n)
	}
	body := c.rbuf[:n]
	if _, err := io.ReadFull(c.r, body); err != nil {
		return nil, err
	}
	return body, nil
}
