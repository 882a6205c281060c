// Package nsq is the omnibus adapter for NSQ (nsqd and nsqlookupd, on
// github.com/nsqio/go-nsq), behind nsq:// URLs:
//
//	nsq://127.0.0.1:4150                                 one nsqd
//	nsq://127.0.0.1:4150?lookupd=10.0.0.5:4161,10.0.0.6:4161&durable=true
//
// The host is the TCP address of the nsqd that messages are published to
// and whose channels Subscribe creates; lookupd lists nsqlookupd HTTP
// addresses through which subscriptions also find every other nsqd that
// has the topic.
//
// # Model
//
// A topic is an NSQ topic (names of 1 to 64 characters from a-z, A-Z, 0-9,
// '.', '_' and '-', the last ones possibly "#ephemeral"); a consumer group is
// an NSQ channel with the group's name (the same rule). Every channel gets
// its own copy of each message; the members of one channel compete. An
// anonymous subscription (no Group) is an ephemeral channel
// "omnibus-<random>#ephemeral", which nsqd deletes (with its messages) when
// its last subscriber leaves.
//
// Subscribe returns once nsqd has confirmed the channel (a SUB answered with
// OK on a connection that stays open until Close), so every message
// published after Subscribe returns reaches the group. Messages published
// to a topic that has no channel yet are kept by nsqd and go to the first
// channel created on it (only that one: a channel created later receives
// the messages published after it exists).
//
// # Envelope
//
// NSQ messages have no headers, so each message body is an envelope
// (version 1):
//
//	0xFF 0x01             magic byte and version
//	uvarint n, n bytes    ID
//	uvarint n, n bytes    Key
//	uvarint count         metadata entries, each: uvarint n, name; uvarint n, value
//	rest                  payload
//
// With a UUIDv7 ID, no key and no metadata that is 41 bytes before the
// payload. Any ID, key, metadata and payload bytes round-trip (the lengths
// are explicit). A body that does not start with 0xFF 0x01 (a message from
// a plain NSQ publisher) or does not decode is delivered as it is: Payload
// is the whole body, ID is NSQ's 16-character message ID, no Key, and
// metadata omnibus-envelope=none or omnibus-envelope=malformed.
// PublishedAt is nsqd's timestamp of the message.
//
// # Publishing
//
// A pool of publish_connections producer connections; Publish sends a
// batch as MPUB (PUB for one message), split so that no MPUB body exceeds
// max_body_size, and returns once nsqd answered OK for every part. A
// message whose envelope exceeds max_message_size is rejected before
// anything is sent, naming it. A lost connection is redialed and the part
// that was not confirmed is sent again until publish_timeout (at-least-once:
// a message can be stored twice, with the same ID); nsqd refusing a message
// (E_BAD_TOPIC, E_BAD_MESSAGE, E_UNAUTHORIZED ...) fails at once.
//
// # Subscribing
//
// A subscription has max_in_flight (default: the subscription's
// pubsub.Prefetch) as RDY: nsqd pushes up to that many
// messages ahead of Receive. Ack is FIN; Nack(d) is REQ with timeout d
// (RequeueWithoutBackoff: a requeue never pauses the consumer); nsqd caps
// the delay at its --max-req-timeout (default 1h), and the adapter, told
// that cap by max_req_timeout, refuses nothing but logs a warning when it
// shortens a longer delay. Attempt is nsqd's attempts counter. go-nsq's
// max_attempts is off: a message is never dropped by the client. While a
// delivery is neither acked nor nacked the adapter TOUCHes it every
// msg_timeout/2, so a slow handler keeps it (up to nsqd's
// --max-msg-timeout, default 15m, after which nsqd redelivers it). Close
// requeues every delivery it still holds; a subscriber that dies has its
// deliveries redelivered by nsqd after msg_timeout. Without lookupd the
// subscription is one connection of the adapter's own to the URL's nsqd: a
// lost one is redialed, subscribed again and given its RDY at once, then
// with exponential backoff (100ms doubling up to lookupd_poll_interval, at
// most 5s). With lookupd it is a go-nsq consumer, which asks lookupd again
// at once and then every lookupd_poll_interval. Deliveries in flight on a
// lost connection come back from nsqd after msg_timeout.
//
// # Durability
//
// nsqd keeps messages in memory by default and loses them on kill -9. Run
// it with --mem-queue-size=0 --sync-every=1 to write every message to disk
// and sync it, then set durable=true here: Capabilities.Persistence becomes
// true and the adapter asks nsqd to write deliveries to the socket
// unbuffered (IDENTIFY output_buffer_size=-1), so a message read from disk
// does not wait in nsqd's output buffer. Even so nsqd holds some messages
// only in memory, and kill -9 loses them: those in flight to a consumer (at
// most max_in_flight per connection), those deferred by a Nack delay, and
// rarely the last one it acknowledged before syncing its disk queue. A
// clean stop (SIGTERM) writes in-flight and deferred messages to disk. No
// replay; no ordering (not per key, not per channel); no broker-side
// dead-letter queue (see package dlq).
//
// # URL parameters
//
//	lookupd=H:P[,H:P]        nsqlookupd HTTP addresses for discovery (default none: only the URL's nsqd)
//	max_in_flight=N          RDY per subscription, 1..65535 (default: the subscription's Prefetch)
//	msg_timeout=D            nsqd redelivers a delivery not acked, nacked or touched within D (default 60s)
//	publish_connections=N    producer connections, 1..64 (default 4)
//	publish_timeout=D        how long Publish retries across reconnects (default 30s)
//	connect_timeout=D        dial, IDENTIFY, TLS and AUTH of one connection (default 10s)
//	heartbeat=D              heartbeat interval; a silent connection is dropped after 2×D (default 15s)
//	lookupd_poll_interval=D  lookupd poll interval; the longest reconnect backoff without lookupd (at most 5s) (default 15s)
//	max_message_size=N       nsqd's --max-msg-size in bytes (default 1048576)
//	max_body_size=N          nsqd's --max-body-size in bytes (default 5242880)
//	max_req_timeout=D        nsqd's --max-req-timeout (default 1h)
//	durable=true|false       nsqd runs with --mem-queue-size=0 --sync-every=1 (default false)
//	tls=true|false           TLS to nsqd (negotiated after IDENTIFY; default false)
//	tls_ca=FILE              PEM CA bundle to trust (default: system roots)
//	tls_cert=FILE, tls_key=FILE  client certificate
//	tls_server_name=S        server name to verify (default: the host of each nsqd dialed)
//	auth_secret=S            secret for nsqd's AUTH (--auth-http-address); never printed
//	client_id=S              client_id sent in IDENTIFY (default: the host name)
//
// An unknown parameter, or a bad value, is an error naming it.
// Capabilities.MaxMessageSize is max_message_size minus 4096 bytes kept for
// the envelope.
package nsq

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gonsq "github.com/nsqio/go-nsq"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Scheme is the URL scheme of this adapter.
const Scheme = "nsq"

func init() { pubsub.Register(Scheme, openURL) }

// envelopeHeadroom is what Capabilities.MaxMessageSize keeps below
// max_message_size for the envelope (ID, key, metadata).
const envelopeHeadroom = 4096

// Options configure a Broker. Zero values mean the documented defaults;
// Dial rejects values out of range with an error naming the field.
type Options struct {
	// Lookupd lists nsqlookupd HTTP addresses (host:port). Subscriptions
	// use them to find every nsqd with the topic. Default none.
	Lookupd []string
	// MaxInFlight is the RDY count of every subscription (1..65535). Zero
	// uses each subscription's pubsub.Prefetch.
	MaxInFlight int
	// MsgTimeout: nsqd redelivers a delivery that is neither acked, nacked
	// nor touched within it. Default 60s; at most nsqd's --max-msg-timeout.
	MsgTimeout time.Duration
	// PublishConnections is the number of producer connections (1..64,
	// default 4), and how many SendBatch calls per topic run at once.
	PublishConnections int
	// PublishTimeout bounds how long Publish re-sends across reconnects
	// (default 30s).
	PublishTimeout time.Duration
	// ConnectTimeout bounds dialing and the handshake (IDENTIFY, TLS, AUTH)
	// of one connection (default 10s).
	ConnectTimeout time.Duration
	// Heartbeat is the interval nsqd sends heartbeats at; a connection
	// silent for twice as long is dropped and redialed (default 15s).
	Heartbeat time.Duration
	// LookupdPollInterval is how often subscriptions poll lookupd and,
	// without lookupd, the longest backoff (at most 5s) between redials of
	// a subscription's lost connection (default 15s).
	LookupdPollInterval time.Duration
	// MaxMessageSize is nsqd's --max-msg-size (default 1048576).
	MaxMessageSize int
	// MaxBodySize is nsqd's --max-body-size, the largest MPUB (default
	// 5242880).
	MaxBodySize int
	// MaxReqTimeout is nsqd's --max-req-timeout, the longest nack delay
	// (default 1h).
	MaxReqTimeout time.Duration
	// Durable says nsqd runs with --mem-queue-size=0 --sync-every=1, so
	// that a message it acknowledged survives kill -9
	// (Capabilities.Persistence). Default false.
	Durable bool
	// TLS, when not nil, upgrades every connection to TLS after IDENTIFY.
	// An empty ServerName means the host of each nsqd dialed.
	TLS *tls.Config
	// AuthSecret is sent with AUTH when nsqd requires it. It is never
	// printed.
	AuthSecret string
	// ClientID is sent in IDENTIFY (default: the short host name).
	ClientID string
	// Logger receives go-nsq's warnings and errors and the adapter's own.
	// Default slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	bad := func(field string, v any, want string) error {
		return fmt.Errorf("nsq: Options.%s = %v: %s: %w", field, v, want, driver.ErrInvalid)
	}
	for _, a := range o.Lookupd {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return o, bad("Lookupd", fmt.Sprintf("%q", a), "want host:port of an nsqlookupd HTTP listener")
		}
	}
	ints := []struct {
		name          string
		v             *int
		def, min, max int
	}{
		{"MaxInFlight", &o.MaxInFlight, 0, 1, 65535},
		{"PublishConnections", &o.PublishConnections, 4, 1, 64},
		{"MaxMessageSize", &o.MaxMessageSize, 1 << 20, envelopeHeadroom + 1, 1 << 30},
		{"MaxBodySize", &o.MaxBodySize, 5 << 20, 1, 1 << 30},
	}
	for _, r := range ints {
		if *r.v == 0 {
			*r.v = r.def
			continue
		}
		if *r.v < r.min || *r.v > r.max {
			return o, bad(r.name, *r.v, fmt.Sprintf("want %d to %d (0 for the default %d)", r.min, r.max, r.def))
		}
	}
	durs := []struct {
		name     string
		v        *time.Duration
		def, min time.Duration
	}{
		{"MsgTimeout", &o.MsgTimeout, 60 * time.Second, time.Second},
		{"PublishTimeout", &o.PublishTimeout, 30 * time.Second, time.Millisecond},
		{"ConnectTimeout", &o.ConnectTimeout, 10 * time.Second, time.Millisecond},
		{"Heartbeat", &o.Heartbeat, 15 * time.Second, time.Second},
		{"LookupdPollInterval", &o.LookupdPollInterval, 15 * time.Second, 10 * time.Millisecond},
		{"MaxReqTimeout", &o.MaxReqTimeout, time.Hour, time.Millisecond},
	}
	for _, r := range durs {
		if *r.v == 0 {
			*r.v = r.def
			continue
		}
		if *r.v < r.min {
			return o, bad(r.name, *r.v, fmt.Sprintf("want at least %v (0 for the default %v)", r.min, r.def))
		}
	}
	if o.Heartbeat > 2*time.Minute {
		return o, bad("Heartbeat", o.Heartbeat, "want at most 2m")
	}
	if o.LookupdPollInterval > 5*time.Minute {
		return o, bad("LookupdPollInterval", o.LookupdPollInterval, "want at most 5m")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

func openURL(ctx context.Context, rawURL string) (driver.Broker, error) {
	addr, opts, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return Dial(ctx, addr, opts)
}

// ParseURL splits an omnibus nsq:// URL into the nsqd TCP address
// (host:port) and the Options its query parameters set. An unknown
// parameter or a bad value is an error wrapping pubsub.ErrInvalid that names
// it; no error contains the auth secret.
func ParseURL(rawURL string) (addr string, opts Options, err error) {
	u, err := driver.ParseURL("nsq", rawURL, pubsub.Redact(rawURL))
	if err != nil {
		return "", opts, err
	}
	if u.Scheme != Scheme {
		return "", opts, fmt.Errorf("nsq: URL scheme %q: want %s: %w", u.Scheme, Scheme, driver.ErrInvalid)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") {
		return "", opts, fmt.Errorf("nsq: URL %s: want nsq://host:port?params, with no user or path (the auth secret is auth_secret=): %w",
			pubsub.Redact(rawURL), driver.ErrInvalid)
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return "", opts, fmt.Errorf("nsq: URL %s: host %q: want host:port of nsqd's TCP listener: %w", pubsub.Redact(rawURL), u.Host, driver.ErrInvalid)
	}
	p := driver.NewParams(Scheme, u.Query())
	if l := p.String("lookupd", ""); l != "" {
		for _, a := range strings.Split(l, ",") {
			if a = strings.TrimSpace(a); a != "" {
				opts.Lookupd = append(opts.Lookupd, a)
			}
		}
	}
	opts.MaxInFlight = p.Int("max_in_flight", 0, 1, 65535)
	opts.MsgTimeout = p.Duration("msg_timeout", 0)
	opts.PublishConnections = p.Int("publish_connections", 0, 1, 64)
	opts.PublishTimeout = p.Duration("publish_timeout", 0)
	opts.ConnectTimeout = p.Duration("connect_timeout", 0)
	opts.Heartbeat = p.Duration("heartbeat", 0)
	opts.LookupdPollInterval = p.Duration("lookupd_poll_interval", 0)
	opts.MaxMessageSize = p.Int("max_message_size", 0, envelopeHeadroom+1, 1<<30)
	opts.MaxBodySize = p.Int("max_body_size", 0, 1, 1<<30)
	opts.MaxReqTimeout = p.Duration("max_req_timeout", 0)
	opts.Durable = p.Bool("durable", false)
	useTLS := p.Bool("tls", false)
	ca, cert, key, sni := p.String("tls_ca", ""), p.String("tls_cert", ""), p.String("tls_key", ""), p.String("tls_server_name", "")
	opts.AuthSecret = p.String("auth_secret", "")
	opts.ClientID = p.String("client_id", "")
	if err := p.Err(); err != nil {
		return "", opts, err
	}
	if !useTLS && (ca != "" || cert != "" || key != "" || sni != "") {
		return "", opts, fmt.Errorf("nsq: tls_* parameters need tls=true: %w", driver.ErrInvalid)
	}
	if useTLS {
		if opts.TLS, err = driver.TLSConfig(Scheme, ca, cert, key, sni); err != nil {
			return "", opts, err
		}
	}
	return u.Host, opts, nil
}

// Broker is a connection to one nsqd (and, for subscriptions, the nsqds
// lookupd knows); it implements driver.Broker. Use it through pubsub.Open or
// pubsub.NewClient.
type Broker struct {
	addr string
	opts Options
	log  *slog.Logger
	caps driver.Capabilities

	cfg   *gonsq.Config
	slots []slot // producer connections
	next  atomic.Uint32

	warnOnce  sync.Once // nack delay above MaxReqTimeout
	closeOnce sync.Once
	closed    atomic.Bool
}

// Dial connects to the nsqd at addr (its TCP host:port) and returns a
// Broker. It fails if the first producer connection cannot be made within
// opts.ConnectTimeout (or ctx); the others are dialed when first used.
func Dial(ctx context.Context, addr string, opts Options) (*Broker, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("nsq: Dial %q: want host:port of nsqd's TCP listener: %w", addr, driver.ErrInvalid)
	}
	if opts.TLS != nil {
		opts.TLS = verifyServerName(opts.TLS)
	}
	b := &Broker{addr: addr, opts: opts, log: opts.Logger}
	b.caps = driver.Capabilities{
		OrderingPerKey: false,
		Persistence:    opts.Durable,
		NackDelay:      true,
		Replay:         false,
		Groups:         true,
		AttemptCount:   true,
		MaxMessageSize: opts.MaxMessageSize - envelopeHeadroom,
		Broker:         "nsq",
		TopicNames:     nameRule,
		GroupNames:     nameRule,
	}
	if b.cfg, err = b.config(); err != nil {
		return nil, err
	}
	b.slots = make([]slot, opts.PublishConnections)
	if _, err := b.slots[0].get(ctx, b); err != nil {
		return nil, err
	}
	return b, nil
}

// config returns a go-nsq configuration with the connection settings every
// connection of this Broker shares.
func (b *Broker) config() (*gonsq.Config, error) {
	o := b.opts
	cfg := gonsq.NewConfig()
	cfg.DialTimeout = o.ConnectTimeout
	cfg.HeartbeatInterval = o.Heartbeat
	cfg.ReadTimeout = 2 * o.Heartbeat
	cfg.WriteTimeout = o.ConnectTimeout
	cfg.MsgTimeout = o.MsgTimeout
	cfg.LookupdPollInterval = o.LookupdPollInterval
	cfg.LookupdPollTimeout = o.ConnectTimeout
	cfg.MaxAttempts = 0 // never let go-nsq drop a message
	cfg.UserAgent = "omnibus (go-nsq/" + gonsq.VERSION + ")"
	if o.ClientID != "" {
		cfg.ClientID = o.ClientID
	}
	if o.TLS != nil {
		cfg.TlsV1 = true
		cfg.TlsConfig = o.TLS
	}
	cfg.AuthSecret = o.AuthSecret
	if o.Durable {
		// nsqd writes each delivery to the socket at once instead of
		// buffering it for up to 250ms: a delivery read from the disk queue
		// is no longer only in nsqd's memory while it waits for a flush.
		cfg.OutputBufferSize = -1
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("nsq: configuration: %v: %w", err, driver.ErrInvalid)
	}
	return cfg, nil
}

// verifyServerName returns a copy of c that verifies the server's
// certificate itself: for c.ServerName when set, otherwise for the host
// go-nsq dialed (each nsqd, including those lookupd lists). go-nsq sets
// ServerName to the dialed host on every connection, so a configured name
// would otherwise be ignored.
func verifyServerName(c *tls.Config) *tls.Config {
	c = c.Clone()
	name := c.ServerName
	roots := c.RootCAs
	c.InsecureSkipVerify = true // verified below
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("x509: nsqd sent no certificate")
		}
		want := name
		if want == "" {
			want = cs.ServerName
		}
		inter := x509.NewCertPool()
		for _, ic := range cs.PeerCertificates[1:] {
			inter.AddCert(ic)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: want, Roots: roots, Intermediates: inter})
		return err
	}
	return c
}

// connectError describes a failed connection. Refused credentials and a
// certificate that does not verify are permanent. go-nsq's errors carry
// no secret.
func connectError(addr string, err error) error {
	var verify *tls.CertificateVerificationError
	var unknown x509.UnknownAuthorityError
	var hostname x509.HostnameError
	msg := err.Error()
	switch {
	case strings.Contains(msg, "Auth Required"):
		return fmt.Errorf("nsq: connect to %s: nsqd requires AUTH and no auth_secret is set: %w: %w", addr, err, driver.ErrPermanent)
	case strings.Contains(msg, "E_AUTH_FAILED"), strings.Contains(msg, "E_UNAUTHORIZED"), strings.Contains(msg, "Error authenticating"):
		return fmt.Errorf("nsq: connect to %s: nsqd refused the auth secret: %w: %w", addr, err, driver.ErrPermanent)
	case errors.As(err, &verify), errors.As(err, &unknown), errors.As(err, &hostname),
		strings.Contains(msg, "x509: "): // go-nsq flattens the TLS error into a string
		return fmt.Errorf("nsq: connect to %s: nsqd's certificate did not verify (tls_ca, tls_server_name): %w: %w", addr, err, driver.ErrPermanent)
	case errors.Is(err, errNoTLS):
		return fmt.Errorf("nsq: connect to %s: %w: %w", addr, err, driver.ErrPermanent)
	}
	return fmt.Errorf("nsq: connect to %s: %w", addr, err)
}

// Capabilities reports what NSQ honours: groups (channels), nack delay and
// attempt counts done by nsqd; persistence only with Options.Durable; no
// ordering, no replay.
func (b *Broker) Capabilities() driver.Capabilities { return b.caps }

// Traits implements driver.Broker: one SendBatch per producer connection,
// of up to 1000 messages each, with group commit (Publish calls that arrive
// while a send is in flight go out together as one MPUB).
func (b *Broker) Traits() driver.Traits {
	return driver.Traits{MaxSendBatch: 1000, MaxConcurrentSends: b.opts.PublishConnections, GroupSends: true}
}

// Close stops the producer connections. Subscriptions are closed first by
// the portable layer. Close is idempotent.
func (b *Broker) Close() error {
	b.closeOnce.Do(func() {
		b.closed.Store(true)
		for i := range b.slots {
			b.slots[i].close()
		}
	})
	return nil
}

func (b *Broker) checkOpen() error {
	if b.closed.Load() {
		return fmt.Errorf("nsq: %w", driver.ErrClosed)
	}
	return nil
}

// nameRule is what nsqd accepts as a topic or channel (group) name.
var nameRule = driver.NameRule{
	MaxBytes: 64,
	Pattern:  `[.a-zA-Z0-9_-]+(#ephemeral)?`,
	Allowed:  `a-z, A-Z, 0-9, ".", "_" and "-", possibly ending in "#ephemeral"`,
}

// Open connects to the broker at url and returns a portable client: the
// same as pubsub.Open with this adapter's scheme (nsq://); a URL of
// another scheme is an error wrapping pubsub.ErrInvalid.
func Open(ctx context.Context, url string) (*pubsub.Client, error) {
	return pubsub.OpenScheme(ctx, url, Scheme)
}
