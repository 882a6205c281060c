// Package activemq is the omnibus adapter for Apache ActiveMQ Artemis and
// ActiveMQ Classic over AMQP 1.0 (on github.com/Azure/go-amqp), behind
// activemq:// and activemqs:// URLs:
//
//	activemq://user:pass@host:61616?groups=billing,audit
//	activemqs://user:pass@host:5671?tls_ca=/etc/ca.pem   (AMQP over TLS)
//	activemq://user:pass@host:5672?flavor=classic        (ActiveMQ Classic)
//
// Everything below describes Artemis, the default flavor; the section
// "ActiveMQ Classic" says where flavor=classic differs.
//
// Without credentials in the URL the adapter logs in with SASL ANONYMOUS.
//
// # Topology
//
// A topic is a multicast address named like the topic. A (topic, group) is a
// durable multicast queue "<topic>.<group>" on that address, attached by its
// fully qualified name "<topic>::<topic>.<group>" with the "topic" capability,
// so the broker creates it on first use. Queue names are broker-wide, so
// topic "a.b" with group "c" and topic "a" with group "b.c" share a name: the
// second one fails with an error from the broker. An anonymous subscription
// (no Group) attaches to the address itself: the broker gives it a private
// non-durable queue that disappears with the subscription. The broker must
// keep a group's queue after its last consumer detached
// (auto-delete-queues=false, which `artemis create` configures).
//
// # Messages nobody is subscribed to
//
// Artemis accepts a message sent to a multicast address that has no queue,
// and drops it. The adapter never lets that happen silently:
//
//   - unroutable=error (the default): before the first publish to a topic,
//     the adapter asks the broker (over its AMQP management address) which
//     queues the address has. With none, Publish fails with an error naming
//     the topic (wrapping pubsub.ErrNotFound): subscribe the group first, or
//     list it in groups=. Once a group queue ("<topic>.<group>") exists the
//     answer is kept for the Broker's lifetime (group queues are durable); a
//     topic with only anonymous subscriptions is asked again on every publish.
//     The login needs the broker's "manage" permission on the management
//     address.
//   - groups=a,b: the queues of these groups are created the first time a
//     topic is published to or subscribed on, so messages published before
//     any consumer started wait in those queues.
//   - unroutable=drop: no check; the broker drops what no queue takes. An
//     explicit opt-in for fire-and-forget fan-out.
//
// # Publishing
//
// A message is sent durable (header durable=true) with ID as the message-id,
// Key as the group-id (JMSXGroupID: the broker keeps a key's messages in
// order and on one consumer of a group), Metadata as application properties
// and the publish time as the creation-time. Every message of a call is
// written to the topic's sender link at once and the call then waits for each
// disposition; concurrent calls share the link, so their messages are
// pipelined too. Publish returns nil only when the broker answered Accepted
// for every message. A Rejected message fails the call (ErrPermanent, naming
// the message); a lost connection is redialed and the messages without an
// answer are sent again (at-least-once: one may be stored twice, with the
// same ID) until publish_timeout. A call whose context ends returns at once;
// if it ended while go-amqp was handing a message to the connection, that
// connection is replaced (go-amqp v1.7.0 leaves its delivery ids out of step
// with the broker's; its open work on cancellation is Azure/go-amqp#277),
// and the other calls' messages on it are sent again on the new one. A call
// that would be sent alone runs on the caller's goroutine
// (driver.Traits.PromptSends).
//
// # Subscribing
//
// A subscription has its own connection and one receiver link whose credit is
// the prefetch (the subscription's pubsub.Prefetch, or prefetch=). Ack sends
// Accepted. Nack(0) sends Modified{delivery-failed}: the broker redelivers
// after the address's redelivery-delay and counts the delivery against its
// max-delivery-attempts, after which it moves the message to its dead-letter
// address. Nack(d) with d > 0 sends a copy of the message to the group's own
// queue (by its fully qualified name) with the x-opt-delivery-delay
// annotation, so the broker delivers it no sooner than d, waits for Accepted,
// then accepts the original; the copy carries the attempts so far in the
// x-opt-omnibus-attempt annotation. If that send fails the message is
// Modified instead (redelivered sooner than d rather than lost). An anonymous
// subscription has no queue name to send to: its Nack(d) waits d in process
// and then sends Modified. Attempt is 1 + the AMQP delivery-count + the
// x-opt-omnibus-attempt annotation. With max_attempts=N a Nack of a delivery
// whose Attempt is N or more sends Rejected instead, which the broker moves
// to its dead-letter address at once.
//
// # Failures
//
// When a connection drops, the publisher redials on the next publish and a
// subscription redials on its next receive (exponential backoff with full
// jitter between reconnect_min and reconnect_max, logged with slog). Acks of
// deliveries from a lost connection fail; the broker redelivers those
// messages. Every dial, handshake and link attach is bounded by
// connection_timeout.
//
// # ActiveMQ Classic (flavor=classic)
//
// A topic T is the virtual topic "VirtualTopic.T" (the sender's target is
// topic://VirtualTopic.T) and group G's durable queue is
// "Consumer.G.VirtualTopic.T" (queue://...), which the broker creates when a
// receiver first attaches and fills with a copy of every message published
// after that. The broker's default virtual-topic settings are assumed
// (topics named VirtualTopic.>, consumer queues Consumer.*.VirtualTopic.>).
// A group name is one path element: it may not contain '.'; topic and group
// names may not contain '*', '>', ',' or white space (wildcards and
// separators on Classic). Such names fail with ErrInvalid naming the field.
// An anonymous subscription is a non-durable subscriber of the virtual topic
// itself.
//
// The unroutable=error check asks the broker's statistics plugin
// (statisticsBrokerPlugin) for the queues matching
// Consumer.*.VirtualTopic.T, and when there are none, for consumers of the
// topic. A broker without that plugin does not answer: Publish then fails
// after connection_timeout with an error saying so; use groups= or
// unroutable=drop there.
//
// Nack(0) sends Modified{delivery-failed}: Classic redelivers it at once
// (about 1 ms) with the delivery-count raised by one. Classic has no
// broker-side limit on such redeliveries, so max_attempts defaults to 10 on
// Classic: the 10th Nack sends Rejected, which moves the message to the
// queue's dead-letter queue (with an individual dead-letter strategy
// prefixed "DLQ.", "DLQ.Consumer.G.VirtualTopic.T"; with the broker's
// default strategy, the shared ActiveMQ.DLQ). Nack(d) sends a delayed copy
// to the group's queue as on Artemis (the broker needs schedulerSupport).
// Classic's redelivery plugin is not used: it refuses delays under one second
// and turns Rejected into a delayed retry.
//
// # URL parameters
//
//	flavor=artemis|classic     the broker (default artemis)
//	groups=a,b                 groups whose queues are created up front (default none)
//	unroutable=error|drop      what a publish to a topic without queues does (default error)
//	prefetch=N                 link credit per subscription, 1..65535 (default: the subscription's Prefetch)
//	max_attempts=N             Nack of a delivery with Attempt >= N dead-letters it (default: never on Artemis, 10 on Classic)
//	publish_timeout=D          how long Publish retries across reconnects (default 30s)
//	connection_timeout=D       dial, handshake and link attach timeout (default 30s)
//	idle_timeout=D             AMQP idle timeout: a silent peer is dropped after it (default 60s)
//	reconnect_min=D            first reconnect backoff (default 100ms)
//	reconnect_max=D            largest reconnect backoff (default 10s)
//	max_message_size=N         largest payload in bytes (default 0: no limit)
//	container_id=S             AMQP container id prefix shown by the broker (default "omnibus")
//	tls_ca=FILE                PEM CA bundle to trust for activemqs (default: system roots)
//	tls_cert=FILE, tls_key=FILE  client certificate for activemqs
//	tls_server_name=S          server name to verify for activemqs (default: the URL host)
//
// An unknown parameter, or a bad value, is an error naming it.
package activemq

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/Azure/go-amqp"

	"github.com/omnibusmq/omnibus/internal/backoff"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// URL schemes of this adapter.
const (
	// Scheme is AMQP 1.0 over TCP.
	Scheme = "activemq"
	// SchemeTLS is AMQP 1.0 over TLS.
	SchemeTLS = "activemqs"
)

func init() {
	pubsub.Register(Scheme, openURL)
	pubsub.Register(SchemeTLS, openURL)
}

// Broker flavors for the flavor= URL parameter.
const (
	// FlavorArtemis is ActiveMQ Artemis, the default.
	FlavorArtemis = "artemis"
	// FlavorClassic is ActiveMQ Classic (5.x, 6.x) with its AMQP transport.
	FlavorClassic = "classic"
)

// classicMaxAttempts is MaxAttempts' default on ActiveMQ Classic, which
// itself never dead-letters a message the adapter nacks.
const classicMaxAttempts = 10

// Options configure a Broker. Zero values mean the documented defaults;
// Dial rejects values out of range with an error naming the field.
type Options struct {
	// Flavor is the broker: FlavorArtemis (default, also for "") or
	// FlavorClassic.
	Flavor string
	// Groups whose queues are created the first time a topic is published
	// to or subscribed on, so nothing published before their consumers
	// start is lost. Default none.
	Groups []string
	// DropUnroutable skips the check that a topic has a queue before the
	// first publish: the broker then silently drops messages sent to a
	// topic nobody subscribed to. Default false (Publish fails instead).
	DropUnroutable bool
	// Prefetch is the link credit of every subscription (1..65535). Zero
	// uses each subscription's pubsub.Prefetch.
	Prefetch int
	// MaxAttempts makes a Nack of a delivery whose Attempt is MaxAttempts or
	// more dead-letter it (AMQP Rejected). Zero means the default: never on
	// Artemis (whose own max-delivery-attempts still counts Nack(0)), 10 on
	// Classic.
	MaxAttempts int
	// PublishTimeout bounds how long a Publish keeps re-sending unanswered
	// messages across reconnects before it fails (default 30s).
	PublishTimeout time.Duration
	// ConnectionTimeout bounds each dial, AMQP handshake and link attach
	// (default 30s).
	ConnectionTimeout time.Duration
	// IdleTimeout is the AMQP idle timeout announced to the broker; a peer
	// that sends nothing for that long is dropped (default 60s).
	IdleTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the exponential reconnect backoff
	// (full jitter). Defaults 100ms and 10s.
	ReconnectMin, ReconnectMax time.Duration
	// MaxMessageSize is the largest payload accepted, in bytes. Zero means no
	// limit (Artemis streams large messages to disk).
	MaxMessageSize int
	// ContainerID prefixes the AMQP container id of every connection
	// (default "omnibus").
	ContainerID string
	// TLS configures activemqs:// connections. Nil means system roots and
	// the URL host as server name.
	TLS *tls.Config
	// Logger receives connection loss and reconnect records. Default
	// slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	switch o.Flavor {
	case "":
		o.Flavor = FlavorArtemis
	case FlavorArtemis, FlavorClassic:
	default:
		return o, fmt.Errorf("activemq: Flavor %q: want %q or %q: %w", o.Flavor, FlavorArtemis, FlavorClassic, driver.ErrInvalid)
	}
	for _, g := range o.Groups {
		if g == "" || strings.ContainsAny(g, " \t\r\n:") {
			return o, fmt.Errorf("activemq: Groups: group %q is empty or contains white space or ':': %w", g, driver.ErrInvalid)
		}
	}
	if o.Flavor == FlavorClassic {
		for _, g := range o.Groups {
			if err := classicName("group", g); err != nil {
				return o, fmt.Errorf("activemq: Groups: %w", err)
			}
		}
	}
	type rng struct {
		name string
		v    *int
		max  int
	}
	for _, r := range []rng{
		{"Prefetch", &o.Prefetch, 65535},
		{"MaxAttempts", &o.MaxAttempts, 1 << 20},
		{"MaxMessageSize", &o.MaxMessageSize, 1 << 30},
	} {
		if *r.v < 0 || *r.v > r.max {
			return o, fmt.Errorf("activemq: %s %d: want 0 (default) to %d: %w", r.name, *r.v, r.max, driver.ErrInvalid)
		}
	}
	if err := driver.DefaultDurations("activemq",
		driver.DurationOption{Name: "PublishTimeout", Value: &o.PublishTimeout, Default: 30 * time.Second},
		driver.DurationOption{Name: "ConnectionTimeout", Value: &o.ConnectionTimeout, Default: 30 * time.Second},
		driver.DurationOption{Name: "IdleTimeout", Value: &o.IdleTimeout, Default: 60 * time.Second},
		driver.DurationOption{Name: "ReconnectMin", Value: &o.ReconnectMin, Default: 100 * time.Millisecond},
		driver.DurationOption{Name: "ReconnectMax", Value: &o.ReconnectMax, Default: 10 * time.Second},
	); err != nil {
		return o, err
	}
	if o.ReconnectMax < o.ReconnectMin {
		return o, fmt.Errorf("activemq: ReconnectMax %v is below ReconnectMin %v: %w", o.ReconnectMax, o.ReconnectMin, driver.ErrInvalid)
	}
	if o.MaxAttempts == 0 && o.Flavor == FlavorClassic {
		o.MaxAttempts = classicMaxAttempts
	}
	if o.ContainerID == "" {
		o.ContainerID = "omnibus"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// openURL is the pubsub.Open entry point for activemq:// and activemqs://.
func openURL(ctx context.Context, rawURL string) (driver.Broker, error) {
	addr, opts, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return Dial(ctx, addr, opts)
}

// ParseURL splits an omnibus activemq:// or activemqs:// URL into the broker
// address (scheme, credentials, host, port; no query) and the Options its
// query parameters set. An unknown parameter or a bad value is an error
// wrapping pubsub.ErrInvalid that names it.
func ParseURL(rawURL string) (addr string, opts Options, err error) {
	u, err := driver.ParseURL("activemq", rawURL, pubsub.Redact(rawURL))
	if err != nil {
		return "", opts, err
	}
	if u.Scheme != Scheme && u.Scheme != SchemeTLS {
		return "", opts, fmt.Errorf("activemq: URL scheme %q: want %s or %s: %w", u.Scheme, Scheme, SchemeTLS, driver.ErrInvalid)
	}
	p := driver.NewParams(u.Scheme, u.Query())
	opts.Flavor = p.Enum("flavor", FlavorArtemis, FlavorArtemis, FlavorClassic)
	opts.Groups = p.List("groups")
	opts.DropUnroutable = p.Enum("unroutable", "error", "error", "drop") == "drop"
	opts.Prefetch = p.Int("prefetch", 0, 1, 65535)
	opts.MaxAttempts = p.Int("max_attempts", 0, 1, 1<<20)
	opts.PublishTimeout = p.Duration("publish_timeout", 0)
	opts.ConnectionTimeout = p.Duration("connection_timeout", 0)
	opts.IdleTimeout = p.Duration("idle_timeout", 0)
	opts.ReconnectMin = p.Duration("reconnect_min", 0)
	opts.ReconnectMax = p.Duration("reconnect_max", 0)
	opts.MaxMessageSize = p.Int("max_message_size", 0, 1, 1<<30)
	opts.ContainerID = p.String("container_id", "")
	ca, cert, key, sni := p.String("tls_ca", ""), p.String("tls_cert", ""), p.String("tls_key", ""), p.String("tls_server_name", "")
	if err := p.Err(); err != nil {
		return "", opts, err
	}
	if u.Scheme == Scheme && (ca != "" || cert != "" || key != "" || sni != "") {
		return "", opts, fmt.Errorf("activemq: tls_* parameters need an activemqs:// URL, not activemq://: %w", driver.ErrInvalid)
	}
	if u.Scheme == SchemeTLS {
		if opts.TLS, err = driver.TLSConfig("activemq", ca, cert, key, sni); err != nil {
			return "", opts, err
		}
	}
	u.RawQuery = ""
	return u.String(), opts, nil
}

// Broker is a connection to one ActiveMQ Artemis or Classic broker; it implements
// driver.Broker. Use it through pubsub.Open or pubsub.NewClient.
type Broker struct {
	opts     Options
	addr     string // redacted, for errors and logs
	dialAddr string // amqp[s]://host:port, no credentials
	host     string
	sasl     amqp.SASLType
	caps     driver.Capabilities

	pub    *publisher
	routed sync.Map        // topic → struct{}: has a durable group queue
	topoMu ctxLock         // held across network calls
	topo   map[string]bool // topics whose Groups queues exist

	instance   string // random, makes container ids unique across Brokers (Classic refuses duplicates)
	connSeq    atomic.Int64
	reconnects atomic.Int64
	closeOnce  sync.Once
	closed     atomic.Bool
	done       chan struct{}
}

// Dial connects to the broker at amqpURL (activemq://user:pass@host:port or
// activemqs://...; no query parameters: use Options) and returns a Broker.
// It fails if the first connection cannot be made within the connection
// timeout; errors never contain the password.
func Dial(ctx context.Context, amqpURL string, opts Options) (*Broker, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	red := pubsub.Redact(amqpURL)
	u, err := driver.ParseURL("activemq", amqpURL, red)
	if err != nil {
		return nil, err
	}
	if u.Scheme != Scheme && u.Scheme != SchemeTLS {
		return nil, fmt.Errorf("activemq: URL scheme %q: want %s or %s: %w", u.Scheme, Scheme, SchemeTLS, driver.ErrInvalid)
	}
	if u.RawQuery != "" {
		return nil, fmt.Errorf("activemq: Dial %s: the URL has query parameters; use Options (or pubsub.Open): %w", red, driver.ErrInvalid)
	}
	if u.Host == "" || u.Port() == "" {
		return nil, fmt.Errorf("activemq: URL %s: want host:port: %w", red, driver.ErrInvalid)
	}
	b := &Broker{opts: opts, addr: red, host: u.Hostname(), topo: map[string]bool{}, topoMu: newCtxLock(), done: make(chan struct{}), instance: instanceID()}
	scheme := "amqp"
	if u.Scheme == SchemeTLS {
		scheme = "amqps"
	}
	b.dialAddr = scheme + "://" + u.Host
	b.sasl = amqp.SASLTypeAnonymous()
	if u.User != nil {
		pass, _ := u.User.Password()
		b.sasl = amqp.SASLTypePlain(u.User.Username(), pass)
	}
	b.caps = driver.Capabilities{
		OrderingPerKey: true,
		Persistence:    true,
		NackDelay:      true,
		Replay:         false,
		Groups:         true,
		AttemptCount:   true,
		MaxMessageSize: opts.MaxMessageSize,
		Broker:         "activemq",
		GroupNames:     groupNames,
	}
	if opts.Flavor == FlavorClassic {
		b.caps.TopicNames, b.caps.GroupNames = classicTopicNames, classicGroupNames
	}
	conn, err := b.dial(ctx, "publish")
	if err != nil {
		return nil, err
	}
	b.pub = newPublisher(b, conn)
	return b, nil
}

// instanceID returns 8 random hex digits.
func instanceID() string {
	var r [4]byte
	_, _ = rand.Read(r[:]) // never fails (crypto/rand)
	return hex.EncodeToString(r[:])
}

// dial opens one AMQP connection for role, bounded by ctx and the
// connection timeout.
func (b *Broker) dial(ctx context.Context, role string) (*amqp.Conn, error) {
	if b.closed.Load() {
		return nil, fmt.Errorf("activemq: %w", driver.ErrClosed)
	}
	ctx, cancel := context.WithTimeout(ctx, b.opts.ConnectionTimeout)
	defer cancel()
	co := &amqp.ConnOptions{
		ContainerID: fmt.Sprintf("%s/%s/%s-%d", b.opts.ContainerID, role, b.instance, b.connSeq.Add(1)),
		HostName:    b.host,
		IdleTimeout: b.opts.IdleTimeout,
		SASLType:    b.sasl,
		Properties:  map[string]any{"product": "omnibus"},
	}
	if b.opts.TLS != nil {
		tc := b.opts.TLS.Clone()
		if tc.ServerName == "" {
			tc.ServerName = b.host
		}
		co.TLSConfig = tc
	}
	c, err := amqp.Dial(ctx, b.dialAddr, co)
	if err != nil {
		return nil, connectError(b.addr, role, ctx, err)
	}
	return c, nil
}

// connectError describes a failed connection attempt. A refused login or a
// broker certificate that does not verify is ErrPermanent: retrying with the
// same options cannot help. addr is already redacted, and the dial address
// carries no credentials.
func connectError(addr, role string, ctx context.Context, err error) error {
	var verify *tls.CertificateVerificationError
	var amqpErr *amqp.Error
	switch {
	case errors.As(err, &verify):
		return fmt.Errorf("activemq: connect to %s (%s): the broker's certificate did not verify (tls_ca, tls_server_name): %w: %w", addr, role, err, driver.ErrPermanent)
	case errors.As(err, &amqpErr) && amqpErr.Condition == amqp.ErrCondUnauthorizedAccess,
		strings.Contains(strings.ToLower(err.Error()), "sasl") && strings.Contains(strings.ToLower(err.Error()), "auth"):
		return fmt.Errorf("activemq: connect to %s (%s): the broker refused the credentials: %w: %w", addr, role, err, driver.ErrPermanent)
	}
	var netErr net.Error
	if ctx.Err() != nil || (errors.As(err, &netErr) && netErr.Timeout()) {
		return fmt.Errorf("activemq: connect to %s (%s): no AMQP handshake within the connection timeout: %w: %w", addr, role, err, context.DeadlineExceeded)
	}
	return fmt.Errorf("activemq: connect to %s (%s): %w", addr, role, err)
}

// Capabilities reports what this broker honours: ordering per key (group-id
// keeps a key on one consumer, in order), persistence (durable messages and
// queues), nack delay (a delayed copy in the group's queue), groups and
// attempt counts (delivery-count, kept by the broker across consumer
// restarts; Classic resets it when the broker itself restarts). No
// replay: a group starts with the messages published after its queue was
// created.
func (b *Broker) Capabilities() driver.Capabilities { return b.caps }

// Traits implements driver.Broker: batches of up to 1000 messages, 8
// concurrent SendBatch calls per topic (they share one link), each
// returning as soon as its context ends (PromptSends).
func (b *Broker) Traits() driver.Traits {
	return driver.Traits{MaxSendBatch: 1000, MaxConcurrentSends: 8, PromptSends: true}
}

// Reconnects returns how many times a lost connection (publish or a
// subscription's) was re-established since Dial.
func (b *Broker) Reconnects() int64 { return b.reconnects.Load() }

// QueueName returns the name of the durable queue the adapter uses for
// (topic, group): "<topic>.<group>".
func QueueName(topic, group string) string { return topic + "." + group }

// fqqn is the fully qualified queue name of (topic, group).
func fqqn(topic, group string) string { return topic + "::" + QueueName(topic, group) }

// Close closes the publish connection. Subscriptions are closed first by
// the portable layer. Close is idempotent.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		close(b.done)
		b.pub.close()
	})
	return nil
}

func (b *Broker) checkOpen() error {
	if b.closed.Load() {
		return fmt.Errorf("activemq: %w", driver.ErrClosed)
	}
	return nil
}

// backoff returns the wait before reconnect attempt n (0-based):
// exponential from ReconnectMin, capped at ReconnectMax, full jitter.
func (b *Broker) backoff(n int) time.Duration {
	return backoff.Policy{Initial: b.opts.ReconnectMin, Max: b.opts.ReconnectMax}.Delay(n + 1)
}

// sleep waits d or until ctx ends or the broker closes.
func (b *Broker) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-b.done:
		return fmt.Errorf("activemq: %w", driver.ErrClosed)
	}
}

// groupNames: a group names a queue of the topic's address; "::" would
// make it a fully qualified queue name, so ':' is reserved.
var groupNames = driver.NameRule{Pattern: `[^:]+`, Allowed: `no ":" (reserved for fully qualified queue names)`}

// ActiveMQ Classic's name rules: '*', '>' and ',' are destination wildcards
// and separators, and a group is one path element of its queue's name.
var (
	classicTopicNames = driver.NameRule{Pattern: `[^*>,\s]+`, Allowed: `no "*", ">", "," or white space`}
	classicGroupNames = driver.NameRule{Pattern: `[^*>,.:\s]+`, Allowed: `no ".", "*", ">", ",", ":" or white space`}
)

// Open connects to the broker at url and returns a portable client: the
// same as pubsub.Open with this adapter's scheme (activemq://, activemqs://); a URL of
// another scheme is an error wrapping pubsub.ErrInvalid.
func Open(ctx context.Context, url string) (*pubsub.Client, error) {
	return pubsub.OpenScheme(ctx, url, Scheme, SchemeTLS)
}
