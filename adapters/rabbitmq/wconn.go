package rabbitmq

import (
	"net"
	"sync"
)

// coalescingConn is the socket of the publish connection.
//
// amqp091-go writes every publishing (method, header and body frames) into a
// bufio.Writer and flushes it at once, under the connection's send lock: one
// write system call per message, which is about a third of the client's CPU
// when publishing small messages. coalescingConn.Write instead appends the
// bytes to a buffer and returns; a flusher goroutine, started when data
// arrives and ended when the buffer is empty, writes the buffer out. While it
// is in a write system call, the publishings of every channel of the
// connection queue up behind it, so under load one system call carries many
// messages, and an idle connection sends each write at once (no timer, no
// Nagle-like delay: the flusher starts as soon as the first byte is there).
//
// Nothing is acknowledged by a successful Write: a publishing counts only
// when the broker confirms it, so a write error is not lost either. When a
// write fails, the socket is closed (amqp091-go's reader then fails and shuts
// the connection down, which resolves every pending confirmation as not
// acked, and the adapter publishes those messages again) and every later
// Write returns the error. At most limit bytes wait in the buffer: beyond
// that, Write blocks until the flusher has taken the buffer, as a plain
// socket write would block on a full send buffer.
type coalescingConn struct {
	net.Conn
	limit int

	mu       sync.Mutex
	space    sync.Cond // signalled when the flusher takes the buffer, or on error
	buf      []byte    // bytes written and not yet handed to the socket
	spare    []byte    // the other buffer, while the flusher does not hold it
	flushing bool      // a flusher goroutine is running
	err      error     // the first write error, or net.ErrClosed after Close
}

const (
	coalesceLimit = 512 << 10 // bytes buffered before Write blocks
	coalesceKeep  = 4 << 20   // larger buffers are not kept for reuse
)

func newCoalescingConn(c net.Conn) *coalescingConn {
	cc := &coalescingConn{Conn: c, limit: coalesceLimit}
	cc.space.L = &cc.mu
	return cc
}

// Write queues p for the socket. It copies p: the caller may reuse it.
func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	for c.err == nil && len(c.buf) >= c.limit {
		c.space.Wait()
	}
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return 0, err
	}
	c.buf = append(c.buf, p...)
	start := !c.flushing
	c.flushing = true
	c.mu.Unlock()
	if start {
		go c.flush()
	}
	return len(p), nil
}

// flush writes the buffer out until it is empty, then ends.
func (c *coalescingConn) flush() {
	c.mu.Lock()
	for {
		if len(c.buf) == 0 || c.err != nil {
			c.flushing = false
			c.mu.Unlock()
			return
		}
		out := c.buf
		c.buf, c.spare = c.spare[:0], nil
		c.space.Broadcast()
		c.mu.Unlock()

		_, err := c.Conn.Write(out)

		c.mu.Lock()
		if cap(out) <= coalesceKeep {
			c.spare = out[:0]
		}
		if err != nil {
			if c.err == nil {
				c.err = err
			}
			c.buf = nil
			c.flushing = false
			c.space.Broadcast()
			c.mu.Unlock()
			// Make the reader fail too, so that amqp091-go shuts the
			// connection down instead of waiting for replies to frames
			// that were never sent.
			_ = c.Conn.Close()
			return
		}
	}
}

// Close closes the socket; data still buffered is discarded (amqp091-go
// closes the socket only after the broker answered connection.close, or
// after the connection failed).
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	if c.err == nil {
		c.err = net.ErrClosed
	}
	c.buf = nil
	c.space.Broadcast()
	c.mu.Unlock()
	return c.Conn.Close()
}
