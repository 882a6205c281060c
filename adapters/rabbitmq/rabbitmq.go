// Package rabbitmq is the omnibus adapter for RabbitMQ (AMQP 0-9-1, on
// github.com/rabbitmq/amqp091-go), behind amqp:// and amqps:// URLs:
//
//	amqp://user:pass@host:5672/vhost?queue_type=quorum&groups=billing,audit
//	amqps://user:pass@host:5671/vhost              (TLS, system roots)
//	amqp://user:pass@h1:5672,h2:5672,h3:5672/vhost (a cluster: failover on reconnect)
//
// # Topology
//
// Every topic is a durable fanout exchange named like the topic. Every
// (topic, group) is a durable queue named "<topic>.<group>" bound to it:
// a quorum queue by default, a classic queue with queue_type=classic. Names
// longer than 255 bytes are shortened with a hash. An anonymous subscription
// (no Group) gets a private classic queue "<topic>.anon.<uuid>", deleted on
// Close (and by the broker 10 minutes after its last consumer went away).
// Topics starting with "amq." are reserved by RabbitMQ and rejected.
//
// With partitions=N a group is instead a durable consistent-hash exchange
// "<topic>.<group>.by-key" (bound to the topic's exchange) routing on the
// routing key over N durable queues "<topic>.<group>.p<i>", each with a
// single active consumer. Every member consumes all N; the broker lets one
// member at a time take each queue, so a key's messages reach one member at
// a time in publish order: only then does the broker report OrderingPerKey.
// On one shared group queue the broker spreads a key's messages over the
// members and their order breaks.
//
// A message is published persistent (delivery mode 2) with ID as the
// message-id property, Key as the routing key and the omnibus-key header,
// Metadata as headers, and the publish time as the timestamp property. A
// message AMQP cannot carry (ID, Key or a metadata key over 255 bytes,
// properties over one frame, metadata named like a header the broker sets)
// is rejected before anything is sent (see CheckMessage).
//
// # Messages nobody is subscribed to
//
// RabbitMQ drops a message that its exchange routes to no queue. The adapter
// never lets that happen silently:
//
//   - unroutable=error (the default): messages are published mandatory; one
//     that reaches no queue comes back from the broker and Publish fails with
//     an error naming it (wrapping pubsub.ErrNotFound). Subscribe the group
//     first, or list it in groups=.
//   - groups=a,b: the queues of these groups are declared (and bound) the
//     first time a topic is published to or subscribed on, so messages
//     published before any consumer started wait in those queues.
//   - unroutable=drop: publish non-mandatory; the broker discards messages no
//     queue is bound for. An explicit opt-in for fire-and-forget fan-out.
//
// # Publishing
//
// Publish uses publisher confirms over a pool of publish_channels channels,
// each pipelining up to confirm_window unconfirmed messages. It returns only
// after the broker confirmed every message of the call. A broker nack is
// retried; a return (see above) is an error naming the message. If the
// connection drops, the messages not yet confirmed are published again on
// the new connection (at-least-once: one may be stored twice, with the same
// ID) until publish_timeout, after which Publish fails naming the first
// message that was not confirmed. Nothing in flight is lost silently. The
// publish connection writes the publishings of all its channels through
// shared system calls: a write goes out at once when the socket is idle,
// and the ones that arrive while a write is under way go out together with
// the next (at most 512 KiB wait; a failed write closes the connection, and
// its unconfirmed messages are published again like after any other loss).
//
// # Subscribing
//
// A subscription consumes with basic.qos prefetch (the subscription's
// pubsub.Prefetch, or prefetch=), and Receive takes deliveries straight
// from the channel's buffer. Delivery.Ack only records the ack (no network
// on the caller's goroutine); a flusher per channel sends the recorded acks
// as soon as a quarter of the prefetch is pending, or at most 1ms after the
// first one: a run of acked deliveries with no unacked delivery below it
// goes out as one basic.ack with multiple=true, an ack above a gap as one
// basic.ack of its own, so no ack waits behind a slow delivery. Closing a
// subscription sends the pending acks and waits, bounded, until the broker
// has taken them (a synchronous command through each queue consumed —
// basic.cancel of the consumer, or with partitions=N the start and cancel of
// an idle second consumer, so the partition stays with this member — then a
// basic.qos round trip) before it closes the channel and gives the rest
// back; acks
// pending when a channel is lost are void (the broker redelivers those
// messages). Nacks go out at once, before any multiple ack that could cover
// them. Nack(0) requeues (quorum queues on RabbitMQ 3.x, which count
// x-delivery-count) or republishes the message to the back of its queue with
// omnibus-attempt+1 (classic queues, and RabbitMQ 4+, whose quorum queues drop
// a message after 20 requeues). Nack(d) with d > 0 republishes the message to
// a delay queue "<queue>.delay.<ms>" (a durable classic queue whose messages
// expire after d — queue TTL and per-message TTL — and are dead-lettered back
// to the work queue), then acks the original; d is rounded up to two
// significant digits so that a few delay queues serve many delays. A
// republish that fails falls back to a requeue. Attempt is omnibus-attempt
// (1 when absent; only the adapter writes it) plus the broker's
// x-delivery-count on a quorum queue's redelivery, or plus one for any
// other delivery the broker flags as redelivered; an x-delivery-count on a
// first delivery came from a publisher and counts for nothing.
//
// # Failures
//
// Publishing and consuming use two connections. When one drops, it is
// redialed with exponential backoff and full jitter (reconnect_min to
// reconnect_max), trying the URL's hosts in turn, each loss and each reconnect is logged with slog, topology
// is declared again and subscriptions resume consuming by themselves. Acks
// for deliveries of a lost channel fail (the broker redelivers those
// messages).
//
// # URL parameters
//
//	queue_type=quorum|classic  type of the group queues (default quorum)
//	groups=a,b                 groups whose queues are declared up front (default none)
//	partitions=N               per-key order with competing members: N partition queues per group, 1..256 (default 0: one shared queue)
//	unroutable=error|drop      what a message that reaches no queue does (default error)
//	publish_channels=N         channels in the publisher pool, 1..256 (default 8)
//	confirm_window=N           unconfirmed messages per channel, 1..65535 (default 512)
//	publish_timeout=D          how long Publish retries across reconnects (default 30s)
//	prefetch=N                 basic.qos per subscription, 1..65535 (default: the subscription's Prefetch)
//	reconnect_min=D            first reconnect backoff (default 100ms)
//	reconnect_max=D            largest reconnect backoff (default 10s)
//	heartbeat=D                AMQP heartbeat (default 10s)
//	connection_timeout=D       dial and handshake timeout per host (default 30s)
//	max_message_size=N         largest payload in bytes (default 128 MiB on RabbitMQ 3.x, 16 MiB on 4+)
//	connection_name=S          client-provided connection name shown by the broker (default "omnibus")
//	tls_ca=FILE                PEM CA bundle to trust for amqps (default: system roots)
//	tls_cert=FILE, tls_key=FILE  client certificate for amqps
//	tls_server_name=S          server name to verify for amqps (default: the URL host)
//
// An unknown parameter, or a bad value, is an error naming it.
package rabbitmq

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// URL schemes of this adapter.
const (
	// Scheme is plain AMQP 0-9-1.
	Scheme = "amqp"
	// SchemeTLS is AMQP 0-9-1 over TLS.
	SchemeTLS = "amqps"
)

func init() {
	pubsub.Register(Scheme, openURL)
	pubsub.Register(SchemeTLS, openURL)
}

// Queue types for Options.QueueType.
const (
	QueueQuorum  = "quorum"
	QueueClassic = "classic"
)

// Options configure a Broker. Zero values mean the documented defaults;
// Dial rejects values out of range with an error naming the field.
type Options struct {
	// QueueType of the group queues: QueueQuorum (default, "") or QueueClassic.
	QueueType string
	// Groups whose queues are declared and bound the first time a topic is
	// published to or subscribed on, so nothing published before their
	// consumers start is lost. Default none.
	Groups []string
	// Partitions, when above zero, splits every group into that many
	// partition queues behind a consistent-hash exchange that routes by Key,
	// each queue with a single active consumer: every member consumes all of
	// them and the broker lets one member at a time take each, so per-key
	// order holds with competing members (OrderingPerKey). Zero (default):
	// one queue per group shared by its members, which can deliver a key's
	// messages out of order (OrderingPerKey false). Every member of a group
	// (and a publisher that lists it in Groups) must use the same value.
	Partitions int
	// DropUnroutable publishes non-mandatory: the broker silently discards
	// a message no queue is bound for. The default (false) publishes
	// mandatory and fails Publish with an error naming such a message.
	DropUnroutable bool
	// PublishChannels is the size of the publisher channel pool (1..256,
	// default 8). It is also how many SendBatch calls per topic the
	// portable layer runs at once.
	PublishChannels int
	// ConfirmWindow is the most unconfirmed messages per channel (1..65535,
	// default 512).
	ConfirmWindow int
	// PublishTimeout bounds how long a Publish keeps re-sending unconfirmed
	// messages across reconnects before it fails (default 30s).
	PublishTimeout time.Duration
	// Prefetch is the basic.qos prefetch count of every subscription
	// (1..65535). Zero uses each subscription's pubsub.Prefetch.
	Prefetch int
	// ReconnectMin and ReconnectMax bound the exponential reconnect backoff
	// (full jitter). Defaults 100ms and 10s.
	ReconnectMin, ReconnectMax time.Duration
	// Heartbeat is the AMQP heartbeat interval (default 10s); a dead peer is
	// noticed after about two intervals.
	Heartbeat time.Duration
	// ConnectionTimeout bounds dialing and the AMQP handshake (default 30s).
	ConnectionTimeout time.Duration
	// MaxMessageSize is the largest payload accepted, in bytes. Zero means
	// the broker's default: 128 MiB on RabbitMQ 3.x, 16 MiB on 4 and later.
	MaxMessageSize int
	// ConnectionName is shown by the broker for both connections (with
	// "/publish" and "/consume" appended). Default "omnibus".
	ConnectionName string
	// TLS configures amqps:// connections. Nil means system roots and the
	// URL host as server name.
	TLS *tls.Config
	// Logger receives connection loss and reconnect records. Default
	// slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.QueueType == "" {
		o.QueueType = QueueQuorum
	}
	if o.QueueType != QueueQuorum && o.QueueType != QueueClassic {
		return o, fmt.Errorf("rabbitmq: QueueType %q: want %q or %q: %w", o.QueueType, QueueQuorum, QueueClassic, driver.ErrInvalid)
	}
	for _, g := range o.Groups {
		if g == "" || strings.ContainsAny(g, " \t\r\n") {
			return o, fmt.Errorf("rabbitmq: Groups: group %q is empty or contains white space: %w", g, driver.ErrInvalid)
		}
	}
	type rng struct {
		name     string
		v        *int
		def, max int
	}
	for _, r := range []rng{
		{"PublishChannels", &o.PublishChannels, 8, 256},
		{"ConfirmWindow", &o.ConfirmWindow, 512, 65535},
		{"Prefetch", &o.Prefetch, 0, 65535},
		{"Partitions", &o.Partitions, 0, maxPartitions},
		{"MaxMessageSize", &o.MaxMessageSize, 0, 512 << 20},
	} {
		if *r.v < 0 || *r.v > r.max {
			return o, fmt.Errorf("rabbitmq: %s %d: want 0 (default) to %d: %w", r.name, *r.v, r.max, driver.ErrInvalid)
		}
		if *r.v == 0 {
			*r.v = r.def
		}
	}
	if err := driver.DefaultDurations("rabbitmq",
		driver.DurationOption{Name: "PublishTimeout", Value: &o.PublishTimeout, Default: 30 * time.Second},
		driver.DurationOption{Name: "ReconnectMin", Value: &o.ReconnectMin, Default: 100 * time.Millisecond},
		driver.DurationOption{Name: "ReconnectMax", Value: &o.ReconnectMax, Default: 10 * time.Second},
		driver.DurationOption{Name: "Heartbeat", Value: &o.Heartbeat, Default: 10 * time.Second},
		driver.DurationOption{Name: "ConnectionTimeout", Value: &o.ConnectionTimeout, Default: 30 * time.Second},
	); err != nil {
		return o, err
	}
	if o.ReconnectMax < o.ReconnectMin {
		return o, fmt.Errorf("rabbitmq: ReconnectMax %v is below ReconnectMin %v: %w", o.ReconnectMax, o.ReconnectMin, driver.ErrInvalid)
	}
	if o.ConnectionName == "" {
		o.ConnectionName = "omnibus"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// openURL is the pubsub.Open entry point for amqp:// and amqps://.
func openURL(ctx context.Context, rawURL string) (driver.Broker, error) {
	addr, opts, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return Dial(ctx, addr, opts)
}

// ParseURL splits an omnibus amqp:// or amqps:// URL into the broker address
// (scheme, credentials, host, port, vhost; no query) and the Options its
// query parameters set. An unknown parameter or a bad value is an error
// wrapping pubsub.ErrInvalid that names it.
func ParseURL(rawURL string) (addr string, opts Options, err error) {
	u, err := driver.ParseURL("rabbitmq", rawURL, pubsub.Redact(rawURL))
	if err != nil {
		return "", opts, err
	}
	if u.Scheme != Scheme && u.Scheme != SchemeTLS {
		return "", opts, fmt.Errorf("rabbitmq: URL scheme %q: want %s or %s: %w", u.Scheme, Scheme, SchemeTLS, driver.ErrInvalid)
	}
	p := driver.NewParams(u.Scheme, u.Query())
	opts.QueueType = p.Enum("queue_type", QueueQuorum, QueueQuorum, QueueClassic)
	opts.Groups = p.List("groups")
	opts.Partitions = p.Int("partitions", 0, 0, maxPartitions)
	opts.DropUnroutable = p.Enum("unroutable", "error", "error", "drop") == "drop"
	opts.PublishChannels = p.Int("publish_channels", 0, 1, 256)
	opts.ConfirmWindow = p.Int("confirm_window", 0, 1, 65535)
	opts.PublishTimeout = p.Duration("publish_timeout", 0)
	opts.Prefetch = p.Int("prefetch", 0, 1, 65535)
	opts.ReconnectMin = p.Duration("reconnect_min", 0)
	opts.ReconnectMax = p.Duration("reconnect_max", 0)
	opts.Heartbeat = p.Duration("heartbeat", 0)
	opts.ConnectionTimeout = p.Duration("connection_timeout", 0)
	opts.MaxMessageSize = p.Int("max_message_size", 0, 1, 512<<20)
	opts.ConnectionName = p.String("connection_name", "")
	ca, cert, key, sni := p.String("tls_ca", ""), p.String("tls_cert", ""), p.String("tls_key", ""), p.String("tls_server_name", "")
	if err := p.Err(); err != nil {
		return "", opts, err
	}
	if u.Scheme == Scheme && (ca != "" || cert != "" || key != "" || sni != "") {
		return "", opts, fmt.Errorf("rabbitmq: tls_* parameters need an amqps:// URL, not amqp://: %w", driver.ErrInvalid)
	}
	if u.Scheme == SchemeTLS {
		if opts.TLS, err = driver.TLSConfig("rabbitmq", ca, cert, key, sni); err != nil {
			return "", opts, err
		}
	}
	u.RawQuery = ""
	return u.String(), opts, nil
}

// Broker is a connection to one RabbitMQ vhost; it implements
// driver.Broker. Use it through pubsub.Open or pubsub.NewClient.
type Broker struct {
	opts     Options
	addr     string       // redacted, for errors and logs
	uri      amqp.URI     // the first host's (credentials, vhost, scheme)
	hosts    []amqp.URI   // every host of the URL, in order
	hostNext atomic.Int32 // the host dial tries first: the last that connected
	cfg      amqp.Config
	caps     driver.Capabilities
	major    int // server major version
	frameMax int // negotiated frame_max: a message's properties must fit one frame (0: no limit)
	requeue0 bool

	pub  *connMgr
	sub  *connMgr
	pool *pubPool
	topo *topology

	reconnects atomic.Int64
	closeOnce  sync.Once
	closed     atomic.Bool
}

// Dial connects to the broker at amqpURL (amqp://user:pass@host:port/vhost
// or amqps://...; no query parameters: use Options) and returns a Broker.
// It fails if the first connection cannot be made: errors never contain the
// password.
func Dial(ctx context.Context, amqpURL string, opts Options) (*Broker, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	red := pubsub.Redact(amqpURL)
	u, err := driver.ParseURL("rabbitmq", amqpURL, red)
	if err != nil {
		return nil, err
	}
	if u.RawQuery != "" {
		return nil, fmt.Errorf("rabbitmq: Dial %s: the URL has query parameters; use Options (or pubsub.Open): %w", red, driver.ErrInvalid)
	}
	// Several hosts (host:port,host:port): one URI per host, tried in turn.
	var hosts []amqp.URI
	for _, h := range strings.Split(u.Host, ",") {
		if h == "" {
			return nil, fmt.Errorf("rabbitmq: bad URL %s: an empty host in the comma-separated host list: %w", red, driver.ErrInvalid)
		}
		one := *u
		one.Host = h
		uri, err := amqp.ParseURI(one.String())
		if err != nil {
			return nil, fmt.Errorf("rabbitmq: bad URL %s: %v: %w", red, pubsub.RedactError(err, one.String()), driver.ErrInvalid)
		}
		hosts = append(hosts, uri)
	}
	uri := hosts[0]
	b := &Broker{opts: opts, addr: red, uri: uri, hosts: hosts}
	b.cfg = amqp.Config{
		Vhost:     uri.Vhost,
		Heartbeat: opts.Heartbeat,
		Locale:    "en_US",
		Properties: amqp.Table{
			"product":         "omnibus",
			"connection_name": opts.ConnectionName,
		},
		Dial: func(network, addr string) (net.Conn, error) {
			c, err := net.DialTimeout(network, addr, opts.ConnectionTimeout)
			if err != nil {
				return nil, err
			}
			// Bound the handshake; amqp091 clears the deadline afterwards.
			if err := c.SetDeadline(time.Now().Add(opts.ConnectionTimeout)); err != nil {
				c.Close()
				return nil, err
			}
			return c, nil
		},
	}
	if uri.Scheme == SchemeTLS {
		tc := opts.TLS
		if tc == nil {
			tc = &tls.Config{MinVersion: tls.VersionTLS12}
		} else {
			tc = tc.Clone()
		}
		if tc.ServerName == "" && len(hosts) == 1 {
			tc.ServerName = uri.Host
		}
		// With several hosts each connection verifies the host it dials
		// (see dialHost).
		b.cfg.TLSClientConfig = tc
	}
	b.topo = newTopology(b)
	b.pub = newConnMgr(b, "publish")
	b.sub = newConnMgr(b, "consume")
	conn, err := b.dial(ctx, "publish")
	if err != nil {
		return nil, err
	}
	b.major = serverMajor(conn)
	b.frameMax = conn.Config.FrameSize
	b.requeue0 = opts.QueueType == QueueQuorum && b.major > 0 && b.major < 4
	maxSize := opts.MaxMessageSize
	if maxSize == 0 {
		maxSize = 128 << 20
		if b.major >= 4 || b.major == 0 {
			maxSize = 16 << 20
		}
	}
	b.caps = driver.Capabilities{
		OrderingPerKey: b.orderingPerKey(),
		Persistence:    true,
		NackDelay:      true,
		Replay:         false,
		Groups:         true,
		AttemptCount:   opts.QueueType == QueueQuorum,
		MaxMessageSize: maxSize,
		Broker:         "rabbitmq",
		TopicNames:     topicNames,
	}
	b.pub.start(conn)
	b.pool = newPubPool(b)
	return b, nil
}

// orderingPerKey reports whether a key's messages reach a group in publish
// order with competing members: only with partition queues that have a
// single active consumer each (one shared queue spreads a key's messages
// over the members).
func (b *Broker) orderingPerKey() bool { return b.opts.Partitions > 0 }

func serverMajor(c *amqp.Connection) int {
	v, _ := c.Properties["version"].(string)
	major, _, _ := strings.Cut(v, ".")
	n, _ := strconv.Atoi(major)
	return n
}

// dial makes one AMQP connection for role, bounded by ctx and the
// connection timeout per host. With several hosts it starts with the one
// that last connected and tries each in turn until one accepts (failover).
func (b *Broker) dial(ctx context.Context, role string) (*amqp.Connection, error) {
	n := len(b.hosts)
	start := int(b.hostNext.Load())
	var errs []error
	for i := 0; i < n; i++ {
		h := (start + i) % n
		c, err := b.dialHost(ctx, role, h)
		if err == nil {
			b.hostNext.Store(int32(h))
			return c, nil
		}
		if n == 1 || ctx.Err() != nil {
			return nil, err
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// dialHost makes one AMQP connection for role to host i.
func (b *Broker) dialHost(ctx context.Context, role string, i int) (*amqp.Connection, error) {
	cfg := b.cfg
	uri := b.hosts[i]
	addr := b.addr
	if len(b.hosts) > 1 {
		addr = fmt.Sprintf("%s (host %s:%d)", b.addr, uri.Host, uri.Port)
		if cfg.TLSClientConfig != nil && cfg.TLSClientConfig.ServerName == "" {
			cfg.TLSClientConfig = cfg.TLSClientConfig.Clone()
			cfg.TLSClientConfig.ServerName = uri.Host
		}
	}
	props := amqp.Table{}
	for k, v := range cfg.Properties {
		props[k] = v
	}
	props["connection_name"] = b.opts.ConnectionName + "/" + role
	cfg.Properties = props
	cfg.SASL = []amqp.Authentication{&amqp.PlainAuth{Username: b.uri.Username, Password: b.uri.Password}}
	// silent records that a read timed out: the server accepted the
	// connection and did not answer within the connection timeout (the
	// handshake deadline), which amqp091 reports as a frame error.
	silent := new(atomic.Bool)
	dial := cfg.Dial
	cfg.Dial = func(network, addr string) (net.Conn, error) {
		c, err := dial(network, addr)
		if err != nil {
			return nil, err
		}
		c = &handshakeConn{Conn: c, silent: silent}
		if role == "publish" {
			// Publishings of all channels share write system calls (see
			// coalescingConn); the consume connection sends few frames.
			c = newCoalescingConn(c)
		}
		return c, nil
	}
	type res struct {
		c   *amqp.Connection
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := amqp.DialConfig(dialURL(uri), cfg)
		ch <- res{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			if silent.Load() {
				return nil, fmt.Errorf("rabbitmq: connect to %s (%s): no answer from the server within connection_timeout=%v (is it an AMQP port, is the broker overloaded?): %w",
					addr, role, b.opts.ConnectionTimeout, r.err)
			}
			return nil, connectError(addr, b.uri.Scheme, role, r.err)
		}
		return r.c, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, fmt.Errorf("rabbitmq: connect to %s (%s): %w", addr, role, ctx.Err())
	}
}

// connectError describes a failed connection attempt. A refused login or a
// broker certificate that does not verify is ErrPermanent: retrying with
// the same options cannot help. addr is already redacted, and amqp091's
// errors carry no credentials.
func connectError(addr, scheme, role string, err error) error {
	var verify *tls.CertificateVerificationError
	var record tls.RecordHeaderError
	var proto *amqp.Error
	switch {
	case errors.Is(err, amqp.ErrCredentials), errors.Is(err, amqp.ErrSASL):
		return fmt.Errorf("rabbitmq: connect to %s (%s): the broker refused the credentials: %w: %w", addr, role, err, driver.ErrPermanent)
	case errors.As(err, &verify):
		return fmt.Errorf("rabbitmq: connect to %s (%s): the broker's certificate did not verify (tls_ca, tls_server_name): %w: %w", addr, role, err, driver.ErrPermanent)
	case scheme == SchemeTLS && errors.As(err, &record):
		return fmt.Errorf("rabbitmq: connect to %s (%s): the server did not answer TLS (a plain AMQP port? use amqp://): %w: %w", addr, role, err, driver.ErrPermanent)
	case scheme == Scheme && errors.As(err, &proto) && (proto.Code == amqp.FrameError || proto.Code == amqp.SyntaxError):
		return fmt.Errorf("rabbitmq: connect to %s (%s): the server's answer is not AMQP 0-9-1 (a TLS port? use amqps://): %w: %w", addr, role, err, driver.ErrPermanent)
	}
	return fmt.Errorf("rabbitmq: connect to %s (%s): %w", addr, role, err)
}

// handshakeConn notes a read that timed out (see dial).
type handshakeConn struct {
	net.Conn
	silent *atomic.Bool
}

func (c *handshakeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.silent.Store(true)
		}
	}
	return n, err
}

// dialURL is the URI without credentials (they travel in cfg.SASL).
func dialURL(u amqp.URI) string {
	u.Username, u.Password = "", ""
	return u.String()
}

// Capabilities reports what this broker honours: ordering per key only
// with partitions=N (a key's partition queue has one active consumer; a
// nacked message comes back after its successors), persistence,
// nack delay (delay queues), groups; attempt counts across restarts only on
// quorum queues. No replay: a group starts with the messages published after
// its queue was declared.
func (b *Broker) Capabilities() driver.Capabilities { return b.caps }

// Traits implements driver.Broker: up to PublishChannels SendBatch calls
// per topic, of up to 1000 messages each; acks are recorded on the caller's
// goroutine and coalesced by each consumer's flusher (InlineAcks).
func (b *Broker) Traits() driver.Traits {
	return driver.Traits{MaxSendBatch: 1000, MaxConcurrentSends: b.opts.PublishChannels, InlineAcks: true, CheckMessage: b.CheckMessage}
}

// Reconnects returns how many times a lost connection (publish or consume)
// was re-established since Dial.
func (b *Broker) Reconnects() int64 { return b.reconnects.Load() }

// QueueName returns the name of the durable queue the adapter uses for
// (topic, group): "<topic>.<group>", shortened with a hash past 255 bytes.
func QueueName(topic, group string) string { return queueName(topic, group) }

// PartitionQueueName returns the name of partition i (0-based) of (topic,
// group) with partitions=N: "<topic>.<group>.p<i>", shortened with a hash
// past 255 bytes.
func PartitionQueueName(topic, group string, i int) string {
	return partitionQueueName(topic, group, i)
}

// Close closes both connections. Subscriptions are closed first by the
// portable layer. Close is idempotent.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		b.pool.close()
		b.sub.close()
		b.pub.close()
	})
	return nil
}

func (b *Broker) checkOpen() error {
	if b.closed.Load() {
		return fmt.Errorf("rabbitmq: %w", driver.ErrClosed)
	}
	return nil
}

// Open connects to the broker at url and returns a portable client: the
// same as pubsub.Open with this adapter's scheme (amqp://, amqps://); a URL of
// another scheme is an error wrapping pubsub.ErrInvalid.
func Open(ctx context.Context, url string) (*pubsub.Client, error) {
	return pubsub.OpenScheme(ctx, url, Scheme, SchemeTLS)
}
