package router

import (
	"fmt"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
)

type mode int

const (
	modeUnordered mode = iota
	modeByKey
	modeStrict
)

func (m mode) String() string {
	switch m {
	case modeByKey:
		return "ordered-by-key"
	case modeStrict:
		return "strict-order"
	}
	return "unordered"
}

// handlerConfig is what HandlerOptions set.
type handlerConfig struct {
	concurrency    int
	concurrencySet bool
	mode           mode
	maxInFlight    int
	maxBatch       int
	maxWait        time.Duration
	outOfOrder     bool
	subOpts        []pubsub.SubscribeOption
	group          string
	mws            []Layer
	err            error
}

// HandlerOption configures one handler (Handle, HandleBatch).
type HandlerOption func(*handlerConfig)

func (c *handlerConfig) fail(format string, args ...any) {
	if c.err == nil {
		c.err = fmt.Errorf(format+": %w", append(args, pubsub.ErrInvalid)...)
	}
}

// Concurrency runs up to n messages of the handler at once (default 1). In
// the unordered mode these are n independent workers; with OrderedByKey,
// n messages of n distinct keys; with HandleBatch, n batches.
func Concurrency(n int) HandlerOption {
	return func(c *handlerConfig) {
		if n < 1 {
			c.fail("router: Concurrency(%d): want at least 1", n)
		}
		c.concurrency, c.concurrencySet = n, true
	}
}

// OrderedByKey keeps the order of messages that share a Key while running
// different keys in parallel (up to Concurrency at once). Each key is its
// own lane: a slow or failing message holds back only the later messages
// of its key, never other keys. Messages with an empty Key are unordered.
//
// Order holds for first effects under failure: a message whose handler
// fails (an error, Redeliver, a busy Dedup claim) is not given back to the
// broker, where later messages of its key would overtake it; it is handled
// again in place after its redelivery delay (Options.NackDelay, or the
// delay Redeliver names), with Message.Attempt counting up, until it
// succeeds or a middleware settles it (Poison after the last attempt).
// Only a shutdown nacks it, followed by the rest of its key in order. The
// broker must keep key order too (Capabilities.OrderingPerKey).
// RedeliverOutOfOrder restores nack-and-move-on.
func OrderedByKey() HandlerOption { return func(c *handlerConfig) { c.mode = modeByKey } }

// StrictOrder processes one message at a time in the order received, keys or
// not. It cannot be combined with Concurrency above 1. A failed message
// holds the whole stream, as a failed message holds its key with
// OrderedByKey.
func StrictOrder() HandlerOption { return func(c *handlerConfig) { c.mode = modeStrict } }

// RedeliverOutOfOrder makes an OrderedByKey or StrictOrder handler nack a
// failed message to the broker and go on with the next message of its key,
// instead of holding the key until the message is handled. Use it only
// where later messages may take effect before an earlier failed one.
func RedeliverOutOfOrder() HandlerOption { return func(c *handlerConfig) { c.outOfOrder = true } }

// MaxInFlight bounds how many received messages of an OrderedByKey or
// StrictOrder handler may wait for or be in their handler at once (default
// max(256, 16×Concurrency)). When the bound is reached the router stops
// receiving until a message is acked or nacked: backpressure. The unordered
// mode never holds more than Concurrency messages.
func MaxInFlight(n int) HandlerOption {
	return func(c *handlerConfig) {
		if n < 1 {
			c.fail("router: MaxInFlight(%d): want at least 1", n)
		}
		c.maxInFlight = n
	}
}

// MaxBatch is the most messages HandleBatch passes in one call (default 100).
func MaxBatch(n int) HandlerOption {
	return func(c *handlerConfig) {
		if n < 1 {
			c.fail("router: MaxBatch(%d): want at least 1", n)
		}
		c.maxBatch = n
	}
}

// MaxWait is how long HandleBatch waits, after a batch's first message, for
// more before calling the handler with what it has (default 10ms).
func MaxWait(d time.Duration) HandlerOption {
	return func(c *handlerConfig) {
		if d <= 0 {
			c.fail("router: MaxWait(%v): want a positive duration", d)
		}
		c.maxWait = d
	}
}

// Group names the handler's consumer group (default: the handler's name).
// Name it explicitly so that renaming the handler keeps its group, and with
// it the group's position on the broker.
func Group(name string) HandlerOption {
	return func(c *handlerConfig) {
		if name == "" {
			c.fail("router: Group(\"\"): the group name is empty")
		}
		c.group = name
	}
}

// Subscribe adds subscription options to this handler's subscription, after
// the router's own (the group and the prefetch), so they may override them:
// for example pubsub.FromOldest() for a new group on a log-based broker.
func Subscribe(opts ...pubsub.SubscribeOption) HandlerOption {
	return func(c *handlerConfig) { c.subOpts = append(c.subOpts, opts...) }
}

// With adds middleware to this handler only, inside the router's (Use).
// Handle checks the order of the whole chain as Use does.
func With(mw ...Layer) HandlerOption {
	return func(c *handlerConfig) {
		if err := checkLayers("With", mw); err != nil && c.err == nil {
			c.err = err
		}
		c.mws = append(c.mws, mw...)
	}
}

func newHandlerConfig(batch bool, opts []HandlerOption) (handlerConfig, error) {
	c := handlerConfig{concurrency: 1, maxBatch: 100, maxWait: 10 * time.Millisecond}
	for _, o := range opts {
		o(&c)
	}
	if c.err != nil {
		return c, c.err
	}
	if c.mode == modeStrict {
		if c.concurrencySet && c.concurrency > 1 {
			return c, fmt.Errorf("router: StrictOrder with Concurrency(%d): strict order runs one message at a time: %w", c.concurrency, pubsub.ErrInvalid)
		}
		c.concurrency = 1
	}
	if batch && c.mode == modeByKey {
		return c, fmt.Errorf("router: OrderedByKey is not supported by HandleBatch (use StrictOrder): %w", pubsub.ErrInvalid)
	}
	if c.maxInFlight == 0 {
		c.maxInFlight = max(256, 16*c.concurrency)
	}
	if c.mode != modeUnordered && c.maxInFlight < c.concurrency {
		c.maxInFlight = c.concurrency
	}
	return c, nil
}
