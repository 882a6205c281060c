package rabbitmq

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
)

func TestCoalescingConnDeliversEveryWriteInOrder(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	c := newCoalescingConn(client)
	c.limit = 64 // small, so that writers also wait for the flusher
	var want bytes.Buffer
	for i := 0; i < 2000; i++ {
		want.WriteString("frame-" + strconv.Itoa(i) + ";")
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(server, int64(want.Len())))
		got <- b
	}()
	p := want.Bytes()
	for len(p) > 0 {
		n := min(len(p), 7+len(p)%13)
		chunk := append([]byte(nil), p[:n]...)
		if w, err := c.Write(chunk); err != nil || w != n {
			t.Fatalf("Write = %d, %v; want %d, nil", w, err, n)
		}
		clear(chunk) // the caller may reuse its buffer at once
		p = p[n:]
	}
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("the peer read %d bytes that differ from the %d written", len(b), want.Len())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %v, want net.ErrClosed", err)
	}
}

// failConn fails every write and records Close.
type failConn struct {
	net.Conn
	mu     sync.Mutex
	closed bool
	wrote  chan struct{}
}

var errWire = errors.New("wire cut")

func (f *failConn) Write(p []byte) (int, error) {
	close(f.wrote)
	return 0, errWire
}

func (f *failConn) Close() error {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	return nil
}

func TestCoalescingConnWriteErrorClosesTheSocketAndFailsLaterWrites(t *testing.T) {
	f := &failConn{wrote: make(chan struct{})}
	c := newCoalescingConn(f)
	if _, err := c.Write([]byte("publish")); err != nil {
		t.Fatalf("first Write = %v (it only queues)", err)
	}
	<-f.wrote
	// The flusher records the error and closes the socket (so that the
	// AMQP reader fails and the connection is shut down); every later
	// Write returns that error.
	for {
		_, err := c.Write([]byte("more"))
		if errors.Is(err, errWire) {
			break
		}
		if err != nil {
			t.Fatalf("Write = %v, want %v", err, errWire)
		}
	}
	f.mu.Lock()
	closed := f.closed
	f.mu.Unlock()
	if !closed {
		t.Fatal("the socket was not closed after a failed write")
	}
}

func TestCoalescingConnCloseReleasesAWriterWaitingForSpace(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	// Nobody reads the server side: the flusher stays blocked in its
	// write, and a writer over the limit waits for space until Close.
	c := newCoalescingConn(client)
	c.limit = 8
	if _, err := c.Write(make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for {
			if _, err := c.Write(make([]byte, 8)); err != nil {
				done <- err
				return
			}
		}
	}()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Fatal("a Write waiting for space returned nil after Close")
	}
}
