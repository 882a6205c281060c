package pubsub

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

var registry = struct {
	sync.RWMutex
	openers map[string]driver.Opener
}{openers: map[string]driver.Opener{}}

// Register makes an adapter available to Open under a URL scheme. Adapters
// call it from init; importing an adapter package (or adapters/all) is what
// makes its scheme work. Register panics if the scheme is already taken.
func Register(scheme string, open driver.Opener) {
	registry.Lock()
	defer registry.Unlock()
	if _, dup := registry.openers[scheme]; dup {
		panic("pubsub: Register called twice for scheme " + scheme)
	}
	registry.openers[scheme] = open
}

// Schemes returns the registered URL schemes, sorted.
func Schemes() []string {
	registry.RLock()
	defer registry.RUnlock()
	s := make([]string, 0, len(registry.openers))
	for k := range registry.openers {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}

// Capability names accepted by the ?require= URL parameter.
var capabilityNames = map[string]func(driver.Capabilities) bool{
	"ordering":     func(c driver.Capabilities) bool { return c.OrderingPerKey },
	"persistence":  func(c driver.Capabilities) bool { return c.Persistence },
	"nackdelay":    func(c driver.Capabilities) bool { return c.NackDelay },
	"replay":       func(c driver.Capabilities) bool { return c.Replay },
	"groups":       func(c driver.Capabilities) bool { return c.Groups },
	"attemptcount": func(c driver.Capabilities) bool { return c.AttemptCount },
}

// OpenScheme is Open for an adapter's own Open function: it fails with an
// error wrapping ErrInvalid, before connecting, unless rawURL's scheme is
// one of schemes.
func OpenScheme(ctx context.Context, rawURL string, schemes ...string) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("pubsub: open %q: cannot parse the URL: %s: %w", Redact(rawURL), parseProblem(err), ErrInvalid)
	}
	if !slices.Contains(schemes, u.Scheme) {
		return nil, fmt.Errorf("pubsub: open %q: scheme %q is not this adapter's (want %s): %w",
			Redact(rawURL), u.Scheme, strings.Join(schemes, " or "), ErrInvalid)
	}
	return Open(ctx, rawURL)
}

// Open connects to the broker named by rawURL's scheme (mem://, kafka://,
// amqp://, postgres://, ...). The adapter must have been imported.
//
// The portable parameter require=name[,name...] fails with ErrUnsupported
// when the broker cannot honour a capability: ordering, persistence,
// nackdelay, replay, groups, attemptcount. Every other parameter belongs to
// the adapter; an unknown one is an ErrInvalid error naming it.
func Open(ctx context.Context, rawURL string, opts ...ClientOption) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("pubsub: open %q: cannot parse the URL: %s: %w", Redact(rawURL), parseProblem(err), ErrInvalid)
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("pubsub: open %q: URL has no scheme (registered: %s): %w", Redact(rawURL), strings.Join(Schemes(), ", "), ErrInvalid)
	}
	registry.RLock()
	open, ok := registry.openers[u.Scheme]
	registry.RUnlock()
	if !ok {
		return nil, fmt.Errorf("pubsub: open %q: unknown scheme %q (registered: %s; import the adapter or github.com/omnibusmq/omnibus/adapters/all): %w",
			Redact(rawURL), u.Scheme, strings.Join(Schemes(), ", "), ErrInvalid)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, fmt.Errorf("pubsub: open %q: cannot parse the query: %s: %w", Redact(rawURL), parseProblem(err), ErrInvalid)
	}
	var required []string
	if r := q.Get("require"); r != "" {
		for _, name := range strings.Split(r, ",") {
			name = strings.TrimSpace(strings.ToLower(name))
			if name == "" {
				continue
			}
			if _, known := capabilityNames[name]; !known {
				return nil, fmt.Errorf("pubsub: open %q: require=%q: unknown capability %q (known: %s): %w",
					Redact(rawURL), r, name, strings.Join(sortedCapNames(), ", "), ErrInvalid)
			}
			required = append(required, name)
		}
	}
	q.Del("require")
	u.RawQuery = q.Encode()
	drv, err := open(ctx, u.String())
	if err != nil {
		return nil, fmt.Errorf("pubsub: open %s: %w", RedactFor(rawURL, err), RedactError(err, rawURL))
	}
	caps := drv.Capabilities()
	var missing []string
	for _, name := range required {
		if !capabilityNames[name](caps) {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		_ = drv.Close()
		return nil, fmt.Errorf("pubsub: open %s: the %s adapter cannot honour require=%s: %w",
			Redact(rawURL), u.Scheme, strings.Join(missing, ","), ErrUnsupported)
	}
	return NewClient(drv, opts...), nil
}

func sortedCapNames() []string {
	s := make([]string, 0, len(capabilityNames))
	for k := range capabilityNames {
		s = append(s, k)
	}
	sort.Strings(s)
	return s
}
