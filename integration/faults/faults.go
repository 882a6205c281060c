// Package faults puts a fault-injecting TCP proxy between a client under
// test and a real broker: github.com/Shopify/toxiproxy/v2 run in process on
// 127.0.0.1, so a test can cut every connection, black-hole traffic or add
// latency without a toxiproxy server or any privileges.
//
//	p := faults.Start(t, "127.0.0.1:16720")  // the broker's address
//	url := "amqp://guest:guest@" + p.Addr() + "/"
//	p.Cut()                                 // close every proxied connection, both sides
//	heal := p.BlackHole()                   // drop all data both ways, connections stay open
//	heal()
//
// The proxy is stopped when the test ends. For a client that dials the
// addresses its broker hands it (Kafka), a Router gives each address a proxy
// of its own through the client's dial function:
//
//	r := faults.NewRouter(t)
//	opts.Dialer = r.Dial                    // kafka.Options
//	r.Cut()                                 // every connection to every broker
package faults

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// Proxy is one TCP proxy to an upstream address.
type Proxy struct {
	t  testing.TB
	mu sync.Mutex // serialises faults
	p  *toxiproxy.Proxy
	n  int // toxics added, for unique names
}

// Start listens on a free port of 127.0.0.1 and forwards every connection
// to upstream (host:port). It fails the test if it cannot listen.
func Start(t testing.TB, upstream string) *Proxy {
	t.Helper()
	p, err := start(t, upstream)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func start(t testing.TB, upstream string) (*Proxy, error) {
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	p := toxiproxy.NewProxy(srv, "faults-"+strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())+"-"+upstream, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		return nil, fmt.Errorf("faults: start proxy to %s: %w", upstream, err)
	}
	t.Cleanup(p.Stop)
	return &Proxy{t: t, p: p}, nil
}

// Addr is the proxy's listening address (host:port); clients connect here.
func (p *Proxy) Addr() string {
	p.p.Lock()
	defer p.p.Unlock()
	return p.p.Listen
}

// Cut closes every connection through the proxy, on both sides (the client
// and the broker each see their connection end), then accepts new ones on
// the same address at once.
func (p *Proxy) Cut() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.p.Stop()
	// The listener is closed and every link torn down; listen again on the
	// address it had (Listen holds the resolved port since the first start).
	var err error
	for i := 0; i < 50; i++ { // the port can take a moment to be free again
		if err = p.p.Start(); err == nil {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.t.Fatalf("faults: restart proxy on %s: %v", p.Addr(), err)
}

// BlackHole drops every byte in both directions from now on, for existing
// and new connections, which stay open (a "timeout" toxic that never closes
// them): to both sides the peer looks alive but silent. The returned
// function lets traffic flow again.
func (p *Proxy) BlackHole() (heal func()) {
	return p.toxic("timeout", `{"timeout":0}`)
}

// Latency delays every chunk of data in both directions by d from now on.
// The returned function removes the delay.
func (p *Proxy) Latency(d time.Duration) (heal func()) {
	return p.toxic("latency", fmt.Sprintf(`{"latency":%d}`, d.Milliseconds()))
}

// toxic adds a toxic of type typ with attributes attrs (JSON) on both
// streams and returns the function that removes both.
func (p *Proxy) toxic(typ, attrs string) func() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	var names []string
	for _, stream := range []string{"upstream", "downstream"} {
		p.n++
		name := fmt.Sprintf("%s-%s-%d", typ, stream, p.n)
		js := fmt.Sprintf(`{"name":%q,"type":%q,"stream":%q,"toxicity":1,"attributes":%s}`, name, typ, stream, attrs)
		if _, err := p.p.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			p.t.Fatalf("faults: add %s toxic: %v", typ, err)
		}
		names = append(names, name)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			for _, name := range names {
				if err := p.p.Toxics.RemoveToxic(context.Background(), name); err != nil {
					p.t.Errorf("faults: remove toxic %s: %v", name, err)
				}
			}
		})
	}
}

// Router sends every connection a client dials through a proxy of its
// own per upstream address, started on the first dial to that address: for
// clients that connect to addresses the broker hands them (Kafka's
// advertised listeners), where a proxy in the bootstrap URL alone would not
// carry their traffic. Its Dial is the client's dial function.
type Router struct {
	t       testing.TB
	mu      sync.Mutex
	proxies map[string]*Proxy // by upstream address
	order   []string          // upstream addresses, in the order first dialled
	holes   []func()          // heals of the black hole in force (nil: none)
	dials   int               // connections opened through the proxies
}

// NewRouter returns a Router whose proxies stop when the test ends.
func NewRouter(t testing.TB) *Router {
	return &Router{t: t, proxies: map[string]*Proxy{}}
}

// Dial connects to addr through its proxy, bounded by ctx and 10 s.
func (r *Router) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	p, err := r.proxy(addr)
	if err != nil {
		return nil, err
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	return d.DialContext(ctx, network, p.Addr())
}

func (r *Router) proxy(addr string) (*Proxy, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dials++
	if p, ok := r.proxies[addr]; ok {
		return p, nil
	}
	p, err := start(r.t, addr)
	if err != nil {
		return nil, err
	}
	if r.holes != nil { // a black hole in force covers new proxies too
		r.holes = append(r.holes, p.BlackHole())
	}
	r.proxies[addr] = p
	r.order = append(r.order, addr)
	return p, nil
}

// Upstreams returns the addresses dialled so far, in the order first dialled.
func (r *Router) Upstreams() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.order)
}

// Dials returns how many connections the client opened through the
// Router (a client that reconnects after each cut opens one more at least).
func (r *Router) Dials() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.dials
}

// Cut closes every connection through every proxy (see Proxy.Cut).
func (r *Router) Cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.order {
		r.proxies[a].Cut()
	}
}

// BlackHole drops every byte through every proxy, and through those
// started until heal is called (see Proxy.BlackHole).
func (r *Router) BlackHole() (heal func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.holes = []func(){}
	for _, a := range r.order {
		r.holes = append(r.holes, r.proxies[a].BlackHole())
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			for _, h := range r.holes {
				h()
			}
			r.holes = nil
		})
	}
}
