// Package kafka is the omnibus adapter for Apache Kafka (kafka:// URLs), on
// github.com/segmentio/kafka-go.
//
// Import it for its side effect and open a client by URL:
//
//	import _ "github.com/omnibusmq/omnibus/adapters/kafka"
//	c, err := pubsub.Open(ctx, "kafka://127.0.0.1:9092,127.0.0.1:9093?acks=all&auto_create=true&partitions=12")
//
// or build one from Options with New and pubsub.NewClient.
//
// # Semantics
//
//   - Publish returns after the broker acknowledged every message of the call
//     (acks=all by default: every in-sync replica has it). Concurrent Publish
//     calls to a topic are merged by the portable layer into SendBatch calls,
//     and each SendBatch is written as one produce request per partition
//     leader (all its partitions in one round trip). Key is the Kafka record
//     key (partitioned by murmur2, like the Java client); ID travels in the
//     "omnibus-id" header and Metadata in the other headers. A failed message
//     is an error naming topic, partition and message ID; a message over the
//     broker's limit is an ErrInvalid error before anything is sent.
//   - Subscribe with pubsub.Group(name) joins the Kafka consumer group name;
//     the broker assigns partitions. Each partition is delivered in order.
//     Acks may come in any order: the committed offset of a partition only
//     ever advances to one past the highest contiguous acked offset. Commits
//     are batched (commit_interval) and flushed when a rebalance takes the
//     partition away and on Close. A nacked message is redelivered in process
//     after its delay (Capabilities.NackDelay is false) and holds the commit
//     back until it is acked; after a rebalance or restart, everything past
//     the committed offset is delivered again (at-least-once).
//   - A group that has no committed offset starts at start= (latest by
//     default) or at the oldest message with pubsub.FromOldest(); its start
//     offset is committed as soon as the member is assigned the partition, so
//     no later rebalance can skip messages published meanwhile.
//   - A subscription without a group reads every partition of the topic
//     directly (no consumer group, nothing committed) from the end of each
//     partition at Subscribe time (or the oldest with FromOldest). The set of
//     partitions is fixed when it opens.
//   - Subscribe returns once the member has joined the group and has its
//     first assignment, with start offsets resolved.
//   - A topic that does not exist is an ErrNotFound error, unless
//     auto_create=true, which creates it with partitions= and
//     replication_factor=.
//
// # URL parameters
//
//	kafka://host:port[,host:port...][?param=value&...]
//
//	client_id=NAME              client ID sent to the broker (default "omnibus")
//	acks=all|leader             produce acknowledgements (default all)
//	compression=none|gzip|snappy|lz4|zstd   produce compression (default none)
//	auto_create=true|false      create a missing topic on first use (default false)
//	partitions=N                partitions of an auto-created topic (default 1)
//	replication_factor=N        replicas of an auto-created topic (default -1: the broker's default.replication.factor)
//	start=latest|earliest       where a new group (or a group-less subscription) starts (default latest)
//	max_message_size=BYTES      largest record accepted (default: the broker's message.max.bytes)
//	commit_interval=DURATION    how often acked offsets are committed (default 200ms)
//	session_timeout=DURATION    group session timeout (default 10s)
//	heartbeat_interval=DURATION group heartbeat interval (default 500ms)
//	rebalance_timeout=DURATION  how long the broker waits for members to rejoin (default 10s)
//	write_timeout=DURATION      bound on one Publish's produce requests and retries (default 30s)
//	dial_timeout=DURATION       connect timeout (default 10s)
//	max_batch=N                 most messages per SendBatch (default 2000)
//	max_in_flight=N             most concurrent SendBatch calls per topic (default 4)
//	fetch_max_bytes=BYTES       most bytes per fetch per partition (default 16 MiB)
//	tls=true|false              TLS on (implied by any other tls_ param)
//	tls_ca=PATH                 PEM file of CAs to trust (default: the system pool)
//	tls_cert=PATH, tls_key=PATH PEM client certificate and key
//	tls_server_name=NAME        server name to verify (default: the host dialled)
//	tls_insecure_skip_verify=true  do not verify the server certificate (tests only)
//	sasl=plain|scram-sha-256|scram-sha-512   SASL mechanism (default none)
//	sasl_user=NAME, sasl_password=SECRET     SASL credentials (or kafka://user:password@host)
//
// Unknown parameters are ErrInvalid errors that name them. Credentials never
// appear in errors or logs.
package kafka

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
	"github.com/segmentio/kafka-go/sasl"

	"github.com/omnibusmq/omnibus/internal/wait"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Scheme is the URL scheme of this adapter.
const Scheme = "kafka"

// HeaderID is the Kafka record header that carries Message.ID.
const HeaderID = "omnibus-id"

func init() { pubsub.Register(Scheme, openURL) }

// Acks selects how many replicas must have a record before Publish returns.
type Acks int

const (
	// AcksAll (the zero value): every in-sync replica has the record.
	AcksAll Acks = iota
	// AcksLeader: the partition leader has the record.
	AcksLeader
)

// Options configure a Kafka broker connection. Zero values mean the
// documented defaults; New validates them.
type Options struct {
	// Brokers are the bootstrap addresses, host:port. Required.
	Brokers []string
	// ClientID is sent to the broker. Default "omnibus".
	ClientID string
	// Acks selects produce acknowledgements. Default AcksAll.
	Acks Acks
	// Compression is "", "none", "gzip", "snappy", "lz4" or "zstd".
	// Default none.
	Compression string
	// AutoCreate creates a missing topic on first publish or subscribe,
	// with Partitions and ReplicationFactor. Default false: a missing topic
	// is an ErrNotFound error.
	AutoCreate bool
	// Partitions of an auto-created topic. Default 1.
	Partitions int
	// ReplicationFactor of an auto-created topic. Default (0) means the
	// broker's default.replication.factor.
	ReplicationFactor int
	// StartFromOldest makes a new group (one with no committed offset) and a
	// group-less subscription start at the oldest retained message instead
	// of the newest. pubsub.FromOldest() does the same per subscription.
	StartFromOldest bool
	// MaxMessageSize is the largest record (payload, key and headers) in
	// bytes. Default: the broker's message.max.bytes, read at New.
	MaxMessageSize int
	// CommitInterval is how often acked offsets are committed. Default
	// 200ms. Offsets are also committed on rebalance and Close.
	CommitInterval time.Duration
	// SessionTimeout of the group membership. Default 10s.
	SessionTimeout time.Duration
	// HeartbeatInterval of the group membership; it bounds how fast a
	// member notices a rebalance. Default 500ms.
	HeartbeatInterval time.Duration
	// RebalanceTimeout is how long the broker waits for members to rejoin
	// during a rebalance. Default 10s.
	RebalanceTimeout time.Duration
	// WriteTimeout bounds one SendBatch, retries included. Default 30s.
	WriteTimeout time.Duration
	// DialTimeout bounds connecting to a broker. Default 10s.
	DialTimeout time.Duration
	// MaxBatch is the most messages the portable layer puts in one
	// SendBatch. Default 2000.
	MaxBatch int
	// MaxInFlight is the most concurrent SendBatch calls per topic.
	// Default 4.
	MaxInFlight int
	// FetchMaxBytes is the most bytes one fetch of one partition returns
	// (at least one whole record batch is always returned). Default 16 MiB.
	FetchMaxBytes int
	// TLS, when non-nil, encrypts connections with this configuration.
	TLS *tls.Config
	// SASL, when non-nil, authenticates connections (see SASLPlain and
	// SASLScram).
	SASL sasl.Mechanism
	// Logger receives background problems (failed commits, rebalances).
	// Default slog.Default().
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if len(o.Brokers) == 0 {
		return o, fmt.Errorf("kafka: Options.Brokers is empty: want at least one host:port: %w", driver.ErrInvalid)
	}
	for _, b := range o.Brokers {
		if b == "" || !strings.Contains(b, ":") {
			return o, fmt.Errorf("kafka: broker address %q: want host:port: %w", b, driver.ErrInvalid)
		}
	}
	if o.ClientID == "" {
		o.ClientID = "omnibus"
	}
	if o.Acks != AcksAll && o.Acks != AcksLeader {
		return o, fmt.Errorf("kafka: Options.Acks %d: want AcksAll or AcksLeader: %w", o.Acks, driver.ErrInvalid)
	}
	if _, err := compressionCodec(o.Compression); err != nil {
		return o, err
	}
	if o.Partitions == 0 {
		o.Partitions = 1
	}
	if o.Partitions < 0 {
		return o, fmt.Errorf("kafka: Options.Partitions %d: want at least 1: %w", o.Partitions, driver.ErrInvalid)
	}
	if o.ReplicationFactor == 0 {
		o.ReplicationFactor = -1
	}
	if o.ReplicationFactor < -1 {
		return o, fmt.Errorf("kafka: Options.ReplicationFactor %d: want at least 1 (or 0 for the broker default): %w", o.ReplicationFactor, driver.ErrInvalid)
	}
	durations := []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"CommitInterval", &o.CommitInterval, 200 * time.Millisecond},
		{"SessionTimeout", &o.SessionTimeout, 10 * time.Second},
		{"HeartbeatInterval", &o.HeartbeatInterval, 500 * time.Millisecond},
		{"RebalanceTimeout", &o.RebalanceTimeout, 10 * time.Second},
		{"WriteTimeout", &o.WriteTimeout, 30 * time.Second},
		{"DialTimeout", &o.DialTimeout, 10 * time.Second},
	}
	for _, d := range durations {
		if *d.v < 0 {
			return o, fmt.Errorf("kafka: Options.%s %v: want a positive duration: %w", d.name, *d.v, driver.ErrInvalid)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if o.HeartbeatInterval >= o.SessionTimeout {
		return o, fmt.Errorf("kafka: Options.HeartbeatInterval %v must be below SessionTimeout %v: %w", o.HeartbeatInterval, o.SessionTimeout, driver.ErrInvalid)
	}
	ints := []struct {
		name string
		v    *int
		def  int
	}{
		{"MaxMessageSize", &o.MaxMessageSize, 0},
		{"MaxBatch", &o.MaxBatch, 2000},
		{"MaxInFlight", &o.MaxInFlight, 4},
		{"FetchMaxBytes", &o.FetchMaxBytes, 16 << 20},
	}
	for _, n := range ints {
		if *n.v < 0 {
			return o, fmt.Errorf("kafka: Options.%s %d: want a positive number: %w", n.name, *n.v, driver.ErrInvalid)
		}
		if *n.v == 0 {
			*n.v = n.def
		}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

func compressionCodec(name string) (kafkago.Compression, error) {
	switch name {
	case "", "none":
		return 0, nil
	case "gzip":
		return kafkago.Gzip, nil
	case "snappy":
		return kafkago.Snappy, nil
	case "lz4":
		return kafkago.Lz4, nil
	case "zstd":
		return kafkago.Zstd, nil
	}
	return 0, fmt.Errorf("kafka: compression %q: want none, gzip, snappy, lz4 or zstd: %w", name, driver.ErrInvalid)
}

// ParseURL turns a kafka:// URL into Options, validating every parameter
// (see the package documentation). Unknown parameters are ErrInvalid errors
// naming them. Errors never contain the password.
func ParseURL(rawURL string) (Options, error) {
	var o Options
	rest, ok := strings.CutPrefix(rawURL, Scheme+"://")
	if !ok {
		return o, fmt.Errorf("kafka: URL %q: want kafka://host:port[,host:port...]: %w", pubsub.Redact(rawURL), driver.ErrInvalid)
	}
	// The host list may hold commas, which net/url refuses in a host:
	// split it off by hand and parse only the query with net/url.
	hostPart, query, _ := strings.Cut(rest, "?")
	hostPart = strings.TrimSuffix(hostPart, "/")
	var user, pass string
	var hasUser bool
	if at := strings.LastIndex(hostPart, "@"); at >= 0 {
		ui := hostPart[:at]
		hostPart = hostPart[at+1:]
		u, p, _ := strings.Cut(ui, ":")
		var err1, err2 error
		user, err1 = url.PathUnescape(u)
		pass, err2 = url.PathUnescape(p)
		if err1 != nil || err2 != nil {
			return o, fmt.Errorf("kafka: URL %s: bad escape in user info: %w", pubsub.Redact(rawURL), driver.ErrInvalid)
		}
		hasUser = true
	}
	if strings.Contains(hostPart, "/") {
		return o, fmt.Errorf("kafka: URL %s: unexpected path %q: %w", pubsub.Redact(rawURL), hostPart[strings.Index(hostPart, "/"):], driver.ErrInvalid)
	}
	for _, h := range strings.Split(hostPart, ",") {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if _, port, found := strings.Cut(h, ":"); !found || port == "" {
			h += ":9092"
		} else if n, err := strconv.Atoi(port[strings.LastIndex(port, ":")+1:]); err != nil || n <= 0 || n > 65535 {
			return o, fmt.Errorf("kafka: URL %s: broker %q: bad port: %w", pubsub.Redact(rawURL), h, driver.ErrInvalid)
		}
		o.Brokers = append(o.Brokers, h)
	}
	if len(o.Brokers) == 0 {
		return o, fmt.Errorf("kafka: URL %s: no broker address: want kafka://host:port: %w", pubsub.Redact(rawURL), driver.ErrInvalid)
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return o, fmt.Errorf("kafka: URL %s: bad query: %w", pubsub.Redact(rawURL), driver.ErrInvalid)
	}
	p := driver.NewParams(Scheme, q)
	o.ClientID = p.String("client_id", "")
	if p.Enum("acks", "all", "all", "leader") == "leader" {
		o.Acks = AcksLeader
	}
	o.Compression = p.Enum("compression", "none", "none", "gzip", "snappy", "lz4", "zstd")
	o.AutoCreate = p.Bool("auto_create", false)
	o.Partitions = p.Int("partitions", 0, 1, 1_000_000)
	o.ReplicationFactor = p.Int("replication_factor", 0, -1, 32767)
	o.StartFromOldest = p.Enum("start", "latest", "latest", "earliest") == "earliest"
	o.MaxMessageSize = p.Int("max_message_size", 0, 1, 1<<30)
	o.CommitInterval = p.Duration("commit_interval", 0)
	o.SessionTimeout = p.Duration("session_timeout", 0)
	o.HeartbeatInterval = p.Duration("heartbeat_interval", 0)
	o.RebalanceTimeout = p.Duration("rebalance_timeout", 0)
	o.WriteTimeout = p.Duration("write_timeout", 0)
	o.DialTimeout = p.Duration("dial_timeout", 0)
	o.MaxBatch = p.Int("max_batch", 0, 1, 1_000_000)
	o.MaxInFlight = p.Int("max_in_flight", 0, 1, 1024)
	o.FetchMaxBytes = p.Int("fetch_max_bytes", 0, 1024, 1<<30)
	tlsOn := p.Bool("tls", false)
	tc := TLSFiles{
		CAFile:             p.String("tls_ca", ""),
		CertFile:           p.String("tls_cert", ""),
		KeyFile:            p.String("tls_key", ""),
		ServerName:         p.String("tls_server_name", ""),
		InsecureSkipVerify: p.Bool("tls_insecure_skip_verify", false),
	}
	mech := p.Enum("sasl", "", "plain", "scram-sha-256", "scram-sha-512")
	if v := p.String("sasl_user", ""); v != "" {
		user, hasUser = v, true
	}
	if p.Has("sasl_password") {
		pass = p.String("sasl_password", "")
	}
	if err := p.Err(); err != nil {
		return o, err
	}
	if tlsOn || tc != (TLSFiles{}) {
		cfg, err := tc.Config()
		if err != nil {
			return o, err
		}
		o.TLS = cfg
	}
	if mech == "" && hasUser {
		return o, fmt.Errorf("kafka: URL %s: credentials given but no sasl= mechanism (plain, scram-sha-256, scram-sha-512): %w", pubsub.Redact(rawURL), driver.ErrInvalid)
	}
	if mech != "" {
		if !hasUser || user == "" {
			return o, fmt.Errorf("kafka: URL %s: sasl=%s needs sasl_user (or user info in the URL): %w", pubsub.Redact(rawURL), mech, driver.ErrInvalid)
		}
		m, err := SASLMechanism(mech, user, pass)
		if err != nil {
			return o, err
		}
		o.SASL = m
	}
	return o, nil
}

func openURL(ctx context.Context, rawURL string) (driver.Broker, error) {
	o, err := ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return New(ctx, o)
}

// Broker is a connection to a Kafka cluster; it implements driver.Broker,
// driver.SendTuning and driver.SendGrouping. Get it from a pubsub.Client with
// c.Driver().(*kafka.Broker) for Kafka-specific features such as
// CreateTopic.
type Broker struct {
	opts      Options
	transport *kafkago.Transport
	conns     *produceConns // produce requests go here, not through transport
	client    *kafkago.Client
	dialer    *kafkago.Dialer
	codec     kafkago.Compression
	maxRecord int // largest record batch the broker takes (message.max.bytes)
	log       *slog.Logger

	metaMu sync.Mutex
	meta   map[string]*topicMeta

	mu      sync.Mutex
	closed  bool
	done    chan struct{}
	pending sync.WaitGroup
}

// New connects to the cluster (one metadata request proves it answers) and
// reads the broker's message.max.bytes unless Options.MaxMessageSize is set.
func New(ctx context.Context, o Options) (*Broker, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	codec, _ := compressionCodec(o.Compression)
	tr := &kafkago.Transport{
		DialTimeout: o.DialTimeout,
		IdleTimeout: 5 * time.Minute,
		MetadataTTL: 5 * time.Second,
		ClientID:    o.ClientID,
		TLS:         o.TLS,
		SASL:        o.SASL,
	}
	b := &Broker{
		opts:      o,
		transport: tr,
		conns:     &produceConns{opts: o, idle: map[string][]*produceConn{}},
		client:    &kafkago.Client{Addr: kafkago.TCP(o.Brokers...), Transport: tr, Timeout: o.WriteTimeout},
		dialer: &kafkago.Dialer{
			ClientID: o.ClientID, Timeout: o.DialTimeout, DualStack: true,
			TLS: o.TLS, SASLMechanism: o.SASL, KeepAlive: 30 * time.Second,
		},
		codec: codec,
		log:   o.Logger,
		meta:  map[string]*topicMeta{},
		done:  make(chan struct{}),
	}
	octx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	defer cancel()
	md, err := b.client.Metadata(octx, &kafkago.MetadataRequest{Topics: []string{}})
	if err != nil {
		tr.CloseIdleConnections()
		return nil, connectError(o, err)
	}
	b.maxRecord = o.MaxMessageSize
	if b.maxRecord == 0 {
		b.maxRecord, err = b.brokerMaxMessageBytes(octx, md)
		if err != nil {
			tr.CloseIdleConnections()
			return nil, err
		}
	}
	return b, nil
}

// connectError describes a failed first contact with the cluster: the
// brokers, the security in use (the SASL mechanism by name, TLS), and, when
// the broker refused the credentials or the TLS handshake failed
// verification, ErrPermanent: retrying with the same options cannot help.
// Credentials never appear in it (kafka-go's errors carry none either).
func connectError(o Options, err error) error {
	var sec []string
	if o.SASL != nil {
		sec = append(sec, "sasl="+strings.ToLower(o.SASL.Name()))
	}
	if o.TLS != nil {
		sec = append(sec, "tls")
	}
	how := ""
	if len(sec) > 0 {
		how = " (" + strings.Join(sec, ", ") + ")"
	}
	var verify *tls.CertificateVerificationError
	var op *net.OpError
	switch {
	case errors.Is(err, kafkago.SASLAuthenticationFailed), errors.Is(err, kafkago.UnsupportedSASLMechanism), errors.Is(err, kafkago.IllegalSASLState):
		return fmt.Errorf("kafka: connect to %s%s: the broker refused the credentials: %w: %w", strings.Join(o.Brokers, ","), how, err, driver.ErrPermanent)
	case errors.As(err, &verify):
		return fmt.Errorf("kafka: connect to %s%s: the broker's certificate did not verify (tls_ca, tls_server_name): %w: %w", strings.Join(o.Brokers, ","), how, err, driver.ErrPermanent)
	case o.TLS != nil && errors.As(err, &op) && op.Op == "remote error":
		// A TLS alert from the broker, typically a missing or untrusted
		// client certificate.
		return fmt.Errorf("kafka: connect to %s%s: the broker refused the TLS handshake (does it require a client certificate? tls_cert, tls_key): %w", strings.Join(o.Brokers, ","), how, err)
	}
	return fmt.Errorf("kafka: connect to %s%s: %w", strings.Join(o.Brokers, ","), how, err)
}

// brokerMaxMessageBytes reads message.max.bytes from one broker.
func (b *Broker) brokerMaxMessageBytes(ctx context.Context, md *kafkago.MetadataResponse) (int, error) {
	if len(md.Brokers) == 0 {
		return 0, fmt.Errorf("kafka: metadata from %s lists no brokers", strings.Join(b.opts.Brokers, ","))
	}
	id := strconv.Itoa(md.Brokers[0].ID)
	res, err := b.client.DescribeConfigs(ctx, &kafkago.DescribeConfigsRequest{
		Resources: []kafkago.DescribeConfigRequestResource{{
			ResourceType: kafkago.ResourceTypeBroker, ResourceName: id, ConfigNames: []string{"message.max.bytes"},
		}},
	})
	if err != nil {
		return 0, fmt.Errorf("kafka: read message.max.bytes of broker %s (set max_message_size to skip): %w", id, err)
	}
	for _, r := range res.Resources {
		if r.Error != nil {
			return 0, fmt.Errorf("kafka: read message.max.bytes of broker %s (set max_message_size to skip): %w", id, r.Error)
		}
		for _, e := range r.ConfigEntries {
			if e.ConfigName == "message.max.bytes" {
				n, err := strconv.Atoi(e.ConfigValue)
				if err != nil || n <= 0 {
					return 0, fmt.Errorf("kafka: broker %s message.max.bytes=%q is not a positive number", id, e.ConfigValue)
				}
				return n, nil
			}
		}
	}
	return 0, fmt.Errorf("kafka: broker %s did not report message.max.bytes (set max_message_size to skip)", id)
}

// recordReserve is the part of message.max.bytes kept for the record batch
// framing and the omnibus-id header when reporting the largest payload.
const recordReserve = 1024

// Capabilities implements driver.Broker.
func (b *Broker) Capabilities() driver.Capabilities {
	return driver.Capabilities{
		OrderingPerKey: true,
		Persistence:    true,
		NackDelay:      false,
		Replay:         true,
		Groups:         true,
		AttemptCount:   false,
		MaxMessageSize: max(b.maxRecord-recordReserve, 1),
	}
}

// SendBatching implements driver.SendTuning: up to MaxBatch messages per
// SendBatch and MaxInFlight concurrent SendBatch calls per topic.
func (b *Broker) SendBatching() (int, int) { return b.opts.MaxBatch, b.opts.MaxInFlight }

// GroupSends implements driver.SendGrouping: every SendBatch is a produce
// request (a syscall and a round of broker work each), so concurrent Publish
// calls wait for the send in flight and go out together when it returns
// (group commit); a further concurrent send, up to MaxInFlight, starts only
// while a full batch (MaxBatch) waits. A lone call is still sent at once.
func (b *Broker) GroupSends() bool { return true }

// Options returns the validated options, defaults filled in. The SASL
// mechanism and TLS configuration are returned as given.
func (b *Broker) Options() Options { return b.opts }

func (b *Broker) enter() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return driver.ErrClosed
	}
	b.pending.Add(1)
	return nil
}

// Close implements driver.Broker: it waits for in-flight sends and closes
// idle connections. Subscriptions are closed by the portable layer first.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.done)
	b.mu.Unlock()
	b.pending.Wait()
	b.conns.close()
	b.transport.CloseIdleConnections()
	return nil
}

// CreateTopic creates topic with the given partitions and replication
// factor (0 or -1: the broker's default) and waits until every partition
// has a leader. An existing topic is not an error.
func (b *Broker) CreateTopic(ctx context.Context, topic string, partitions, replicationFactor int) error {
	if partitions < 1 {
		return fmt.Errorf("kafka: create topic %q: partitions %d: want at least 1: %w", topic, partitions, driver.ErrInvalid)
	}
	if replicationFactor == 0 {
		replicationFactor = -1
	}
	res, err := b.client.CreateTopics(ctx, &kafkago.CreateTopicsRequest{Topics: []kafkago.TopicConfig{{
		Topic: topic, NumPartitions: partitions, ReplicationFactor: replicationFactor,
	}}})
	if err != nil {
		return fmt.Errorf("kafka: create topic %q: %w", topic, err)
	}
	if err := res.Errors[topic]; err != nil && !errors.Is(err, kafkago.TopicAlreadyExists) {
		return fmt.Errorf("kafka: create topic %q with %d partition(s), replication factor %d: %w", topic, partitions, replicationFactor, err)
	}
	for {
		tm, err := b.cachedTopic(ctx, topic)
		if err == nil && tm.ready() {
			b.metaMu.Lock()
			b.meta[topic] = tm
			b.metaMu.Unlock()
			return nil
		}
		if !wait.Sleep(ctx, 50*time.Millisecond) {
			if err == nil {
				err = errors.New("some partitions have no leader yet")
			}
			return fmt.Errorf("kafka: create topic %q: waiting for its partitions: %v: %w", topic, err, ctx.Err())
		}
	}
}

// DeleteTopic deletes topic (tests and tools use it).
func (b *Broker) DeleteTopic(ctx context.Context, topic string) error {
	res, err := b.client.DeleteTopics(ctx, &kafkago.DeleteTopicsRequest{Topics: []string{topic}})
	if err != nil {
		return fmt.Errorf("kafka: delete topic %q: %w", topic, err)
	}
	if err := res.Errors[topic]; err != nil {
		return fmt.Errorf("kafka: delete topic %q: %w", topic, err)
	}
	b.metaMu.Lock()
	delete(b.meta, topic)
	b.metaMu.Unlock()
	return nil
}

// topicMeta is a cached view of one topic's partitions.
type topicMeta struct {
	partitions []int          // partition IDs, ascending
	leader     map[int]int    // partition → leader broker ID (-1: none)
	addr       map[int]string // leader broker ID → host:port
	fetched    time.Time
}

func (tm *topicMeta) ready() bool {
	if len(tm.partitions) == 0 {
		return false
	}
	for _, p := range tm.partitions {
		if tm.leader[p] < 0 {
			return false
		}
	}
	return true
}

const metaTTL = 10 * time.Second

// topic returns the metadata of topic, from this broker's cache unless it
// is stale or refresh is set. A missing topic is created when AutoCreate is
// on and is otherwise an ErrNotFound error.
func (b *Broker) topic(ctx context.Context, topic string, refresh bool) (*topicMeta, error) {
	b.metaMu.Lock()
	tm := b.meta[topic]
	b.metaMu.Unlock()
	if tm != nil && !refresh && time.Since(tm.fetched) < metaTTL {
		return tm, nil
	}
	tm, err := b.fetchTopic(ctx, topic)
	if err != nil {
		return nil, err
	}
	b.metaMu.Lock()
	b.meta[topic] = tm
	b.metaMu.Unlock()
	return tm, nil
}

// fetchTopic reads topic's partitions and leaders. The kafka-go transport
// answers metadata requests from a cache that knows only the topics of its
// last refresh, so a topic missing there is looked up with a fresh
// connection before it is called missing, and the cache is then refreshed.
func (b *Broker) fetchTopic(ctx context.Context, topic string) (*topicMeta, error) {
	tm, err := b.cachedTopic(ctx, topic)
	if err == nil && tm.ready() {
		return tm, nil
	}
	if err != nil && !errors.Is(err, kafkago.UnknownTopicOrPartition) {
		return nil, fmt.Errorf("kafka: metadata of topic %q: %w", topic, err)
	}
	fresh, err := b.freshTopic(ctx, topic)
	if errors.Is(err, kafkago.UnknownTopicOrPartition) {
		if !b.opts.AutoCreate {
			return nil, fmt.Errorf("kafka: topic %q does not exist (create it, or open with auto_create=true): %w", topic, driver.ErrNotFound)
		}
		if err := b.CreateTopic(ctx, topic, b.opts.Partitions, b.opts.ReplicationFactor); err != nil {
			return nil, err
		}
		b.log.Info("omnibus: kafka: created topic", "topic", topic, "partitions", b.opts.Partitions, "replication_factor", b.opts.ReplicationFactor)
		return b.cachedTopic(ctx, topic)
	}
	if err != nil {
		return nil, fmt.Errorf("kafka: metadata of topic %q: %w", topic, err)
	}
	// The topic exists: make the shared transport learn it. With the topic
	// missing from its cache, a metadata request allowing auto-creation is
	// sent to the broker and refreshes the cache; the topic exists, so
	// nothing is created.
	if _, err := b.transport.RoundTrip(ctx, b.client.Addr, &metadataAPI.Request{
		TopicNames: []string{topic}, AllowAutoTopicCreation: true,
	}); err != nil {
		return nil, fmt.Errorf("kafka: metadata of topic %q: %w", topic, err)
	}
	if tm, err := b.cachedTopic(ctx, topic); err == nil && tm.ready() {
		return tm, nil
	}
	return fresh, nil
}

// cachedTopic reads topic from the shared transport's metadata cache.
func (b *Broker) cachedTopic(ctx context.Context, topic string) (*topicMeta, error) {
	md, err := b.client.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, err
	}
	return topicFrom(md, topic)
}

// freshTopic asks the cluster itself (a new connection, no cache, no
// auto-creation) for topic's metadata.
func (b *Broker) freshTopic(ctx context.Context, topic string) (*topicMeta, error) {
	tr := &kafkago.Transport{
		DialTimeout: b.opts.DialTimeout, ClientID: b.opts.ClientID, TLS: b.opts.TLS, SASL: b.opts.SASL,
		MetadataTopics: []string{topic}, MetadataTTL: time.Hour,
	}
	defer tr.CloseIdleConnections()
	c := &kafkago.Client{Addr: b.client.Addr, Transport: tr}
	md, err := c.Metadata(ctx, &kafkago.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, err
	}
	return topicFrom(md, topic)
}

func topicFrom(md *kafkago.MetadataResponse, topic string) (*topicMeta, error) {
	for _, t := range md.Topics {
		if t.Name != topic {
			continue
		}
		if t.Error != nil {
			return nil, t.Error
		}
		tm := &topicMeta{leader: map[int]int{}, addr: map[int]string{}, fetched: time.Now()}
		for _, p := range t.Partitions {
			tm.partitions = append(tm.partitions, p.ID)
			leader := -1
			if p.Leader.Host != "" {
				leader = p.Leader.ID
				tm.addr[leader] = net.JoinHostPort(p.Leader.Host, strconv.Itoa(p.Leader.Port))
			}
			tm.leader[p.ID] = leader
		}
		sortInts(tm.partitions)
		if len(tm.partitions) == 0 {
			return nil, kafkago.UnknownTopicOrPartition
		}
		return tm, nil
	}
	return nil, kafkago.UnknownTopicOrPartition
}

func sortInts(a []int) {
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j] < a[j-1]; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}

// Traits implements driver.Broker.
func (b *Broker) Traits() driver.Traits {
	return driver.Traits{MaxSendBatch: b.opts.MaxBatch, MaxConcurrentSends: b.opts.MaxInFlight, GroupSends: true, InlineAcks: true}
}
