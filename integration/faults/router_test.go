package faults_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration/faults"
)

// echoServer accepts connections on loopback and echoes what they send,
// until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}

// roundTrip writes one byte and reads the echo, bounded by d.
func roundTrip(c net.Conn, d time.Duration) error {
	if err := c.SetDeadline(time.Now().Add(d)); err != nil {
		return err
	}
	if _, err := c.Write([]byte{'x'}); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, 1))
	return err
}

// A Router gives each address dialled a proxy of its own; Cut ends every
// connection through all of them, and the addresses can be dialled again;
// a black hole covers the proxies that exist and those started during it.
func TestRouterProxiesEveryAddressDialledAndFaultsThemAll(t *testing.T) {
	a, b := echoServer(t), echoServer(t)
	r := faults.NewRouter(t)
	ctx := context.Background()
	dial := func(addr string) net.Conn {
		t.Helper()
		c, err := r.Dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	ca, cb := dial(a), dial(b)
	for _, c := range []net.Conn{ca, cb} {
		if err := roundTrip(c, 5*time.Second); err != nil {
			t.Fatalf("through the proxy: %v", err)
		}
		if c.RemoteAddr().String() == a || c.RemoteAddr().String() == b {
			t.Fatalf("connected to %s directly, not through a proxy", c.RemoteAddr())
		}
	}
	if got, want := r.Upstreams(), []string{a, b}; !slices.Equal(got, want) {
		t.Fatalf("upstreams %v, want %v", got, want)
	}

	r.Cut()
	for _, c := range []net.Conn{ca, cb} {
		if err := roundTrip(c, 5*time.Second); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a connection survived the cut (round trip: %v)", err)
		}
	}
	ca, cb = dial(a), dial(b)
	if err := roundTrip(ca, 5*time.Second); err != nil {
		t.Fatalf("after the cut: %v", err)
	}

	heal := r.BlackHole()
	if err := roundTrip(cb, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("through the black hole: %v, want no answer", err)
	}
	c := echoServer(t)
	cc := dial(c) // a proxy started during the hole is in it too
	if err := roundTrip(cc, 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("through the black hole, new address: %v, want no answer", err)
	}
	heal()
	fresh := dial(c)
	if err := roundTrip(fresh, 5*time.Second); err != nil {
		t.Fatalf("after the black hole: %v", err)
	}
	if got := r.Dials(); got != 6 {
		t.Errorf("Dials() = %d, want 6", got)
	}
}
