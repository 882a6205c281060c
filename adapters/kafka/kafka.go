// Package kafka is the omnibus adapter for Apache Kafka (kafka:// URLs), on
// github.com/twmb/franz-go (pkg/kgo for producing and consuming, pkg/kadm
// for topic administration).
//
// franz-go is a complete Kafka client: idempotent producing, leader changes
// followed through fresh metadata, retries only for retriable errors, one
// multiplexed connection per broker, throttling, SASL re-authentication
// (KIP-368) and cooperative rebalancing. The adapter adds only what omnibus
// needs on top: per-delivery acks that commit contiguous offsets, in-process
// nacks, revocation of deliveries when a rebalance moves their partition,
// and the portable error contract.
//
// Import it for its side effect and open a client by URL:
//
//	import _ "github.com/omnibusmq/omnibus/adapters/kafka"
//	c, err := pubsub.Open(ctx, "kafka://127.0.0.1:9092,127.0.0.1:9093?auto_create=true&partitions=12")
//
// or build one from Options with New and pubsub.NewClient.
//
// # Semantics
//
//   - Publish returns after the broker acknowledged every message of the call
//     (acks=all by default: every in-sync replica has it). Producing is
//     idempotent with acks=all: a produce whose outcome was unknown (a
//     timeout, a dropped connection) is retried without duplicating records
//     in the log. Concurrent Publish calls to a topic are merged by the
//     portable layer into SendBatch calls, each handed to franz-go whole.
//     Key is the Kafka record key, partitioned by murmur2 like the Java
//     client; ID travels in the "omnibus-id" header and Metadata in the other
//     headers. A failed message is an error naming topic, partition and
//     message ID. A message over the broker's limit, an invalid topic name
//     and a rejected record are ErrInvalid errors returned at once; an
//     authorization failure is ErrPermanent; transient errors (leader
//     changes, a dropped connection) are retried inside until write_timeout.
//   - Subscribe with pubsub.Group(name) joins the Kafka consumer group name
//     (cooperative-sticky balancing by default, see balancer=); the broker
//     assigns partitions. Each partition is delivered in order. Acks may come
//     in any order: the committed offset of a partition only ever advances to
//     one past the highest contiguous acked offset. Commits are batched
//     (commit_interval) and flushed when a rebalance takes the partition away
//     and on Close. A nacked message is redelivered in process after its
//     delay (Capabilities.NackDelay is false) and holds the commit back until
//     it is acked; after a rebalance or restart, everything past the
//     committed offset is delivered again (at-least-once).
//   - When a rebalance takes a partition away, the adapter revokes the
//     partition's driver.Lease before its last commit: nothing received from
//     it is handed out any more, and Ack or Nack of a delivery from it
//     returns pubsub.ErrRevoked (its new owner delivers it again).
//   - A group that has no committed offset starts at start= (latest by
//     default) or at the oldest message with pubsub.FromOldest(); its start
//     offset is committed as soon as the member is assigned the partition, so
//     no later rebalance can skip messages published meanwhile.
//   - A subscription without a group reads every partition of the topic
//     directly (no consumer group, nothing committed) from the end of each
//     partition at Subscribe time (or the oldest with FromOldest).
//   - Subscribe returns once the member has joined the group and has its
//     first assignment, with start offsets resolved.
//   - A topic that does not exist is an ErrNotFound error, unless
//     auto_create=true, which creates it with partitions= and
//     replication_factor=.
//   - Each Broker has one franz-go client for producing and administration;
//     each subscription has one more (a consumer group is a client's own).
//     franz-go keeps one connection per broker per client.
//
// # URL parameters
//
//	kafka://host:port[,host:port...][?param=value&...]
//
//	client_id=NAME              client ID sent to the broker (default "omnibus")
//	acks=all|leader             produce acknowledgements (default all; leader turns idempotence off)
//	compression=none|gzip|snappy|lz4|zstd   produce compression (default none)
//	auto_create=true|false      create a missing topic on first use (default false)
//	partitions=N                partitions of an auto-created topic (default 1)
//	replication_factor=N        replicas of an auto-created topic (default -1: the broker's default.replication.factor)
//	start=latest|earliest       where a new group (or a group-less subscription) starts (default latest)
//	balancer=cooperative-sticky|range|roundrobin   group partition balancer (default cooperative-sticky)
//	max_message_size=BYTES      largest record accepted (default: the broker's message.max.bytes)
//	commit_interval=DURATION    how often acked offsets are committed (default 200ms)
//	session_timeout=DURATION    group session timeout (default 10s)
//	heartbeat_interval=DURATION group heartbeat interval (default 500ms)
//	rebalance_timeout=DURATION  how long the broker waits for members to rejoin (default 10s)
//	write_timeout=DURATION      bound on one Publish, retries included (default 30s)
//	dial_timeout=DURATION       bound on connecting and on the first answer of the cluster at Open (default 10s)
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
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"

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
	// Producing is idempotent.
	AcksAll Acks = iota
	// AcksLeader: the partition leader has the record. Kafka allows
	// idempotent producing only with AcksAll, so a retried produce may
	// duplicate records.
	AcksLeader
)

// Balancer names a consumer group partition balancer.
type Balancer string

// The balancers a group member offers (all members of a group must share
// one).
const (
	BalancerCooperativeSticky Balancer = "cooperative-sticky"
	BalancerRange             Balancer = "range"
	BalancerRoundRobin        Balancer = "roundrobin"
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
	// Balancer is the group's partition balancer. Default
	// BalancerCooperativeSticky.
	Balancer Balancer
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
	// DialTimeout bounds connecting to a broker, and New's wait for the
	// cluster's first answer. Default 10s.
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
	// SASL, when non-nil, authenticates connections (see SASLMechanism).
	SASL sasl.Mechanism
	// Dialer, when non-nil, opens the TCP connections to the brokers
	// instead of a net.Dialer (a SOCKS proxy, a test's fault proxy). It
	// cannot be combined with TLS.
	Dialer func(ctx context.Context, network, address string) (net.Conn, error)
	// Logger receives background problems (failed commits, rebalances,
	// franz-go's warnings). Default slog.Default().
	Logger *slog.Logger
}

// DefaultDialTimeout is the default of Options.DialTimeout (dial_timeout).
const DefaultDialTimeout = 10 * time.Second

// checkBrokers checks Options.Brokers for Dial.
func (o Options) checkBrokers() error {
	if len(o.Brokers) == 0 {
		return fmt.Errorf("kafka: Options.Brokers is empty: want at least one host:port: %w", driver.ErrInvalid)
	}
	for _, b := range o.Brokers {
		if b == "" || !strings.Contains(b, ":") {
			return fmt.Errorf("kafka: broker address %q: want host:port: %w", b, driver.ErrInvalid)
		}
	}
	return nil
}

func (o Options) withDefaults() (Options, error) {
	if o.ClientID == "" {
		o.ClientID = "omnibus"
	}
	if o.Acks != AcksAll && o.Acks != AcksLeader {
		return o, fmt.Errorf("kafka: Options.Acks %d: want AcksAll or AcksLeader: %w", o.Acks, driver.ErrInvalid)
	}
	if _, err := compressionCodec(o.Compression); err != nil {
		return o, err
	}
	if o.Balancer == "" {
		o.Balancer = BalancerCooperativeSticky
	}
	if _, err := groupBalancer(o.Balancer); err != nil {
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
		{"DialTimeout", &o.DialTimeout, DefaultDialTimeout},
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
		name     string
		v        *int
		def, max int
	}{
		{"MaxMessageSize", &o.MaxMessageSize, 0, 1 << 30},
		{"MaxBatch", &o.MaxBatch, 2000, 1_000_000},
		{"MaxInFlight", &o.MaxInFlight, 4, 1024},
		{"FetchMaxBytes", &o.FetchMaxBytes, 16 << 20, 1 << 30},
	}
	for _, n := range ints {
		if *n.v < 0 || *n.v > n.max {
			return o, fmt.Errorf("kafka: Options.%s %d: want a positive number up to %d: %w", n.name, *n.v, n.max, driver.ErrInvalid)
		}
		if *n.v == 0 {
			*n.v = n.def
		}
	}
	if o.Dialer != nil && o.TLS != nil {
		return o, fmt.Errorf("kafka: Options.Dialer and Options.TLS are both set: a custom Dialer must do TLS itself: %w", driver.ErrInvalid)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

func compressionCodec(name string) (kgo.CompressionCodec, error) {
	switch name {
	case "", "none":
		return kgo.NoCompression(), nil
	case "gzip":
		return kgo.GzipCompression(), nil
	case "snappy":
		return kgo.SnappyCompression(), nil
	case "lz4":
		return kgo.Lz4Compression(), nil
	case "zstd":
		return kgo.ZstdCompression(), nil
	}
	return kgo.NoCompression(), fmt.Errorf("kafka: compression %q: want none, gzip, snappy, lz4 or zstd: %w", name, driver.ErrInvalid)
}

func groupBalancer(b Balancer) (kgo.GroupBalancer, error) {
	switch b {
	case BalancerCooperativeSticky:
		return kgo.CooperativeStickyBalancer(), nil
	case BalancerRange:
		return kgo.RangeBalancer(), nil
	case BalancerRoundRobin:
		return kgo.RoundRobinBalancer(), nil
	}
	return nil, fmt.Errorf("kafka: balancer %q: want cooperative-sticky, range or roundrobin: %w", b, driver.ErrInvalid)
}

// splitUserInfo splits rest (a kafka:// URL without its scheme) into the
// user info (ok false when there is none) and the remainder. The user info
// ends at the last "@" before the query; an "@" after a "?" still ends it
// when no "=" or "&" stands between the "?" and the "@" (a password holding
// "?" that was not percent-encoded), so that such a password is never taken
// for a host or a parameter and printed.
func splitUserInfo(rest string) (userinfo, remainder string, ok bool) {
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return "", rest, false
	}
	if q := strings.Index(rest, "?"); q >= 0 && q < at && strings.ContainsAny(rest[q:at], "=&") {
		// The last "@" is in the query (sasl_user=a@b): look before it.
		at = strings.LastIndex(rest[:q], "@")
		if at < 0 {
			return "", rest, false
		}
	}
	return rest[:at], rest[at+1:], true
}

// ParseURL turns a kafka:// URL into Options, validating every parameter
// (see the package documentation). Unknown parameters are ErrInvalid errors
// naming them. Errors never contain the password nor the URL: they name the
// parameter or the broker's position in the list.
func ParseURL(rawURL string) (Options, error) {
	var o Options
	rest, ok := strings.CutPrefix(strings.TrimSpace(rawURL), Scheme+"://")
	if !ok {
		return o, fmt.Errorf("kafka: URL: want kafka://host:port[,host:port...]: %w", driver.ErrInvalid)
	}
	userinfo, rest, hasUser := splitUserInfo(rest)
	// The host list may hold commas, which net/url refuses in a host:
	// split it off by hand and parse only the query with net/url.
	hostPart, query, _ := strings.Cut(rest, "?")
	hostPart = strings.TrimSuffix(hostPart, "/")
	var user, pass string
	if hasUser {
		u, p, _ := strings.Cut(userinfo, ":")
		var err1, err2 error
		user, err1 = url.PathUnescape(u)
		pass, err2 = url.PathUnescape(p)
		if err1 != nil || err2 != nil {
			return o, fmt.Errorf("kafka: URL: bad %%-escape in the user info: %w", driver.ErrInvalid)
		}
	}
	if i := strings.Index(hostPart, "/"); i >= 0 {
		return o, fmt.Errorf("kafka: URL: unexpected path after the broker list (a Kafka URL has none; parameters follow \"?\"): %w", driver.ErrInvalid)
	}
	hosts := strings.Split(hostPart, ",")
	for i, h := range hosts {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		host, port, found := strings.Cut(h, ":")
		if !found || port == "" {
			h += ":9092"
		} else if n, err := strconv.Atoi(port[strings.LastIndex(port, ":")+1:]); err != nil || n <= 0 || n > 65535 || host == "" {
			// The broker is named by its position only: a password that
			// was not percent-encoded may have ended up here.
			return o, fmt.Errorf("kafka: URL: broker %d of %d: want host:port with a port in 1..65535 (percent-encode \"@\", \":\", \"/\", \"?\" and \"#\" in a password): %w", i+1, len(hosts), driver.ErrInvalid)
		}
		o.Brokers = append(o.Brokers, h)
	}
	if len(o.Brokers) == 0 {
		return o, fmt.Errorf("kafka: URL: no broker address: want kafka://host:port: %w", driver.ErrInvalid)
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return o, fmt.Errorf("kafka: URL: bad query (percent-encode special characters in values): %w", driver.ErrInvalid)
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
	o.Balancer = Balancer(p.Enum("balancer", string(BalancerCooperativeSticky),
		string(BalancerCooperativeSticky), string(BalancerRange), string(BalancerRoundRobin)))
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
		return o, fmt.Errorf("kafka: URL: credentials given but no sasl= mechanism (plain, scram-sha-256, scram-sha-512): %w", driver.ErrInvalid)
	}
	if mech != "" {
		if !hasUser || user == "" {
			return o, fmt.Errorf("kafka: URL: sasl=%s needs sasl_user (or user info in the URL): %w", mech, driver.ErrInvalid)
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
	return Dial(ctx, o)
}

// Broker is a connection to a Kafka cluster; it implements driver.Broker
// (its Traits ask for group commit). Get it from a pubsub.Client with
// c.As(&kb) (var kb *kafka.Broker) for Kafka-specific features such as
// CreateTopic.
type Broker struct {
	opts      Options
	base      []kgo.Opt   // the options every client starts from (clientOpts)
	cl        *kgo.Client // produce and admin
	adm       *kadm.Client
	maxRecord int // largest record batch the broker takes (message.max.bytes)
	log       *slog.Logger

	known sync.Map // topic → struct{}: checked to exist

	mu      sync.Mutex
	closed  bool
	pending sync.WaitGroup
}

// clientOpts are the franz-go options every client of this broker shares:
// addresses, identity, security, timeouts and logging.
func (o Options) clientOpts() []kgo.Opt {
	opts := []kgo.Opt{
		kgo.SeedBrokers(o.Brokers...),
		kgo.ClientID(o.ClientID),
		kgo.DialTimeout(o.DialTimeout),
		// A leader change is followed within this bound (franz-go refreshes
		// metadata on NOT_LEADER errors, at most this often).
		kgo.MetadataMinAge(250 * time.Millisecond),
		kgo.WithLogger(slogLogger{o.Logger}),
	}
	if o.TLS != nil {
		opts = append(opts, kgo.DialTLSConfig(o.TLS.Clone()))
	}
	if o.Dialer != nil {
		opts = append(opts, kgo.Dialer(o.Dialer))
	}
	if o.SASL != nil {
		opts = append(opts, kgo.SASL(o.SASL))
	}
	return opts
}

// Dial connects to the cluster at Options.Brokers with the security in
// Options and reads the broker's message.max.bytes unless
// Options.MaxMessageSize is set. It fails when the cluster gives no answer
// within DialTimeout (a port that accepts and never answers, the wrong
// protocol), naming the brokers and the security in use.
func Dial(ctx context.Context, o Options) (*Broker, error) {
	if err := o.checkBrokers(); err != nil {
		return nil, err
	}
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	return start(ctx, o, o.clientOpts())
}

// New returns a Broker on the cluster cl connects to: the producer and the
// consumers it creates start from cl's options (cl.Opts(): seed brokers,
// TLS, SASL, dialer, client ID), with the adapter's own producer and
// consumer settings on top, so that they keep key order and bound every
// wait. cl itself is not used to send or receive and stays the caller's:
// Close does not close it. Options.Brokers, TLS, SASL and Dialer must be
// left empty (they come from cl), and cl must not consume (no
// ConsumerGroup, ConsumeTopics or ConsumePartitions): otherwise New returns
// an error wrapping pubsub.ErrInvalid naming the field. Like Dial it checks
// that the cluster answers within DialTimeout.
func New(ctx context.Context, cl *kgo.Client, o Options) (*Broker, error) {
	switch {
	case cl == nil:
		return nil, fmt.Errorf("kafka: New: the client is nil: %w", driver.ErrInvalid)
	case len(o.Brokers) > 0:
		return nil, fmt.Errorf("kafka: New: Options.Brokers is set: the brokers come from the client (or use Dial): %w", driver.ErrInvalid)
	case o.TLS != nil:
		return nil, fmt.Errorf("kafka: New: Options.TLS is set: TLS comes from the client (or use Dial): %w", driver.ErrInvalid)
	case o.SASL != nil:
		return nil, fmt.Errorf("kafka: New: Options.SASL is set: SASL comes from the client (or use Dial): %w", driver.ErrInvalid)
	case o.Dialer != nil:
		return nil, fmt.Errorf("kafka: New: Options.Dialer is set: the dialer comes from the client (or use Dial): %w", driver.ErrInvalid)
	}
	if g, _ := cl.OptValue(kgo.ConsumerGroup).(string); g != "" {
		return nil, fmt.Errorf("kafka: New: the client consumes as group %q: bring a client without consumer options: %w", g, driver.ErrInvalid)
	}
	if ts, _ := cl.OptValue(kgo.ConsumeTopics).([]string); len(ts) > 0 {
		return nil, fmt.Errorf("kafka: New: the client consumes topics %q: bring a client without consumer options: %w", ts, driver.ErrInvalid)
	}
	if ps, _ := cl.OptValue(kgo.ConsumePartitions).(map[string]map[int32]kgo.Offset); len(ps) > 0 {
		return nil, fmt.Errorf("kafka: New: the client consumes partitions: bring a client without consumer options: %w", driver.ErrInvalid)
	}
	o.Brokers, _ = cl.OptValue(kgo.SeedBrokers).([]string) // for error messages
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	base := append(slices.Clone(cl.Opts()), kgo.MetadataMinAge(250*time.Millisecond))
	return start(ctx, o, base)
}

// start connects a Broker whose clients begin with the options base.
func start(ctx context.Context, o Options, base []kgo.Opt) (*Broker, error) {
	b := &Broker{opts: o, log: o.Logger, maxRecord: o.MaxMessageSize, base: base}
	// A first client proves the cluster answers and reads the record
	// limit, which the producing client needs at creation.
	probe, err := kgo.NewClient(append(b.clientOpts(), kgo.RequestRetries(0))...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %v: %w", err, driver.ErrInvalid)
	}
	pctx, cancel := context.WithTimeout(ctx, o.DialTimeout)
	defer cancel()
	if b.maxRecord == 0 {
		b.maxRecord, err = brokerMaxMessageBytes(pctx, kadm.NewClient(probe))
	} else {
		err = probe.Ping(pctx)
	}
	probe.Close()
	if err != nil {
		if ctx.Err() == nil && pctx.Err() != nil {
			err = fmt.Errorf("no answer within %v (dial_timeout; is it a Kafka listener with this security?): %w", o.DialTimeout, err)
		}
		return nil, connectError(o, err)
	}
	codec, _ := compressionCodec(o.Compression)
	popts := append(b.clientOpts(),
		kgo.ProducerBatchCompression(codec),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.ProducerBatchMaxBytes(int32(min(b.maxRecord, 1<<30))),
		// SendBatch produces with ProduceSync, which lets a batch's records
		// linger until all are buffered and then drains their partitions
		// at once (one request per broker for the batch). The linger itself
		// is waited only by the first batch to a topic whose partitions the
		// producer does not know yet.
		kgo.ProducerLinger(5*time.Millisecond),
		kgo.RecordDeliveryTimeout(o.WriteTimeout),
		kgo.MaxBufferedRecords(max(10_000, 2*o.MaxBatch*o.MaxInFlight)),
	)
	if o.Acks == AcksLeader {
		popts = append(popts, kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite())
	} else {
		popts = append(popts, kgo.RequiredAcks(kgo.AllISRAcks()))
	}
	b.cl, err = kgo.NewClient(popts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %v: %w", err, driver.ErrInvalid)
	}
	b.adm = kadm.NewClient(b.cl)
	return b, nil
}

// clientOpts returns a copy of the options every client of b starts from.
func (b *Broker) clientOpts() []kgo.Opt { return slices.Clone(b.base) }

// connectError describes a failed first contact with the cluster: the
// brokers, the security in use (the SASL mechanism by name, TLS), and, when
// the broker refused the credentials or the TLS handshake failed
// verification, ErrPermanent: retrying with the same options cannot help.
// Credentials never appear in it (franz-go's errors carry none either).
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
	brokers := strings.Join(o.Brokers, ",")
	var verify *tls.CertificateVerificationError
	var op *net.OpError
	switch {
	case errors.Is(err, kerr.SaslAuthenticationFailed), errors.Is(err, kerr.UnsupportedSaslMechanism), errors.Is(err, kerr.IllegalSaslState):
		return fmt.Errorf("kafka: connect to %s%s: the broker refused the credentials: %w: %w", brokers, how, err, driver.ErrPermanent)
	case errors.As(err, &verify):
		return fmt.Errorf("kafka: connect to %s%s: the broker's certificate did not verify (tls_ca, tls_server_name): %w: %w", brokers, how, err, driver.ErrPermanent)
	case o.TLS != nil && errors.As(err, &op) && op.Op == "remote error":
		// A TLS alert from the broker, typically a missing or untrusted
		// client certificate.
		return fmt.Errorf("kafka: connect to %s%s: the broker refused the TLS handshake (does it require a client certificate? tls_cert, tls_key): %w", brokers, how, err)
	}
	return fmt.Errorf("kafka: connect to %s%s: %w", brokers, how, err)
}

// brokerMaxMessageBytes reads message.max.bytes from the cluster.
func brokerMaxMessageBytes(ctx context.Context, adm *kadm.Client) (int, error) {
	md, err := adm.BrokerMetadata(ctx)
	if err != nil {
		return 0, err
	}
	if len(md.Brokers) == 0 {
		return 0, fmt.Errorf("the cluster's metadata lists no brokers")
	}
	rcs, err := adm.DescribeBrokerConfigs(ctx, md.Brokers[0].NodeID)
	if err != nil {
		return 0, err
	}
	for _, rc := range rcs {
		if rc.Err != nil {
			return 0, fmt.Errorf("read message.max.bytes (set max_message_size to skip): %w", rc.Err)
		}
		for _, c := range rc.Configs {
			if c.Key == "message.max.bytes" && c.Value != nil {
				n, err := strconv.Atoi(*c.Value)
				if err != nil || n <= 0 {
					return 0, fmt.Errorf("the broker's message.max.bytes=%q is not a positive number (set max_message_size to skip): %w", *c.Value, driver.ErrPermanent)
				}
				return n, nil
			}
		}
	}
	return 0, fmt.Errorf("the broker did not report message.max.bytes (set max_message_size to skip): %w", driver.ErrPermanent)
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
		Broker:         "kafka",
		TopicNames:     topicNames,
	}
}

// topicNames is what Kafka accepts as a topic name; group IDs are free.
var topicNames = driver.NameRule{
	MaxBytes: 249,
	Pattern:  `[a-zA-Z0-9._-]*[a-zA-Z0-9_-][a-zA-Z0-9._-]*|\.{3,}`,
	Allowed:  `ASCII letters, digits, ".", "_" and "-", not "." or ".."`,
}

// Traits implements driver.Broker: up to MaxBatch messages per SendBatch and
// MaxInFlight concurrent SendBatch calls per topic, with group commit
// (concurrent Publish calls wait for the send in flight and go out together
// when it returns, handed to franz-go as one batch of records; measured on
// franz-go, this still beats franz-go's own batching of concurrent
// ProduceSync calls, docs/benchmarks.md); an ack only marks an offset
// (InlineAcks).
func (b *Broker) Traits() driver.Traits {
	return driver.Traits{MaxSendBatch: b.opts.MaxBatch, MaxConcurrentSends: b.opts.MaxInFlight, GroupSends: true, InlineAcks: true}
}

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
// the client. Subscriptions are closed by the portable layer first.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.pending.Wait()
	b.cl.Close()
	return nil
}

// validTopic checks a topic name as Kafka does (topicNames: 1 to 249 of
// ASCII letters, digits, ".", "_" and "-"; not "." or ".."), so that a bad
// name given to CreateTopic is an ErrInvalid error at once. Publish and
// Subscribe get the same check from the portable layer (Capabilities).
func validTopic(topic string) error {
	if topic == "" || len(topic) > 249 || topic == "." || topic == ".." {
		return fmt.Errorf("kafka: topic %q: want 1 to 249 characters, not \".\" or \"..\": %w", topic, driver.ErrInvalid)
	}
	for i := 0; i < len(topic); i++ {
		c := topic[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("kafka: topic %q: byte %d (%#x) is not allowed: Kafka topic names use only ASCII letters, digits, \".\", \"_\" and \"-\": %w", topic, i, c, driver.ErrInvalid)
		}
	}
	return nil
}

// CreateTopic creates topic with the given partitions and replication
// factor (0 or -1: the broker's default) and waits until every partition
// has a leader. An existing topic is not an error.
func (b *Broker) CreateTopic(ctx context.Context, topic string, partitions, replicationFactor int) error {
	if err := validTopic(topic); err != nil {
		return err
	}
	if partitions < 1 {
		return fmt.Errorf("kafka: create topic %q: partitions %d: want at least 1: %w", topic, partitions, driver.ErrInvalid)
	}
	if replicationFactor == 0 {
		replicationFactor = -1
	}
	_, err := b.adm.CreateTopic(ctx, int32(partitions), int16(replicationFactor), nil, topic)
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		if errors.Is(err, kerr.InvalidReplicationFactor) || errors.Is(err, kerr.InvalidPartitions) || errors.Is(err, kerr.InvalidTopicException) {
			err = fmt.Errorf("%w: %w", err, driver.ErrInvalid)
		}
		return fmt.Errorf("kafka: create topic %q with %d partition(s), replication factor %d: %w", topic, partitions, replicationFactor, err)
	}
	for {
		err := b.topicReady(ctx, topic)
		if err == nil {
			b.known.Store(topic, struct{}{})
			return nil
		}
		if !wait.Sleep(ctx, 50*time.Millisecond) {
			return fmt.Errorf("kafka: create topic %q: waiting for its partitions: %v: %w", topic, err, ctx.Err())
		}
	}
}

// topicReady reports nil when topic exists and every partition has a
// leader.
func (b *Broker) topicReady(ctx context.Context, topic string) error {
	td, err := b.adm.ListTopics(ctx, topic)
	if err != nil {
		return err
	}
	d, ok := td[topic]
	if !ok {
		return kerr.UnknownTopicOrPartition
	}
	if d.Err != nil {
		return d.Err
	}
	if len(d.Partitions) == 0 {
		return kerr.UnknownTopicOrPartition
	}
	for _, p := range d.Partitions {
		if p.Err != nil {
			return fmt.Errorf("partition %d: %w", p.Partition, p.Err)
		}
		if p.Leader < 0 {
			return fmt.Errorf("partition %d has no leader yet", p.Partition)
		}
	}
	return nil
}

// DeleteTopic implements driver.TopicDeleter: it deletes topic with its
// records; Kafka drops every group's committed offsets of a deleted topic
// itself, so groups is not needed.
func (b *Broker) DeleteTopic(ctx context.Context, topic string, _ []string) error {
	b.known.Delete(topic)
	if _, err := b.adm.DeleteTopic(ctx, topic); err != nil {
		return fmt.Errorf("kafka: delete topic %q: %w", topic, err)
	}
	return nil
}

// ensureTopic returns nil when topic exists (checked once per Broker), and
// creates it when AutoCreate is on; otherwise a missing topic is an
// ErrNotFound error.
func (b *Broker) ensureTopic(ctx context.Context, topic string) error {
	if _, ok := b.known.Load(topic); ok {
		return nil
	}
	td, err := b.adm.ListTopics(ctx, topic)
	if err != nil {
		return fmt.Errorf("kafka: metadata of topic %q: %w", topic, err)
	}
	d, ok := td[topic]
	switch {
	case ok && d.Err == nil:
		b.known.Store(topic, struct{}{})
		return nil
	case ok && !errors.Is(d.Err, kerr.UnknownTopicOrPartition):
		return fmt.Errorf("kafka: metadata of topic %q: %w", topic, classify(d.Err))
	}
	if !b.opts.AutoCreate {
		return fmt.Errorf("kafka: topic %q does not exist (create it, or open with auto_create=true): %w", topic, driver.ErrNotFound)
	}
	if err := b.CreateTopic(ctx, topic, b.opts.Partitions, b.opts.ReplicationFactor); err != nil {
		return err
	}
	b.log.Info("omnibus: kafka: created topic", "topic", topic, "partitions", b.opts.Partitions, "replication_factor", b.opts.ReplicationFactor)
	return nil
}

// classify wraps a Kafka error with the portable sentinel it means: bad
// input is ErrInvalid, refused authorization ErrPermanent, a missing topic
// ErrNotFound; other errors are returned as they are (transient).
func classify(err error) error {
	switch {
	case errors.Is(err, kerr.MessageTooLarge), errors.Is(err, kerr.RecordListTooLarge), errors.Is(err, kerr.InvalidRecord),
		errors.Is(err, kerr.InvalidTopicException), errors.Is(err, kerr.CorruptMessage), errors.Is(err, kerr.InvalidRequiredAcks),
		errors.Is(err, kerr.InvalidTimestamp), errors.Is(err, kerr.UnsupportedCompressionType):
		return fmt.Errorf("%w: %w", err, driver.ErrInvalid)
	case errors.Is(err, kerr.TopicAuthorizationFailed), errors.Is(err, kerr.ClusterAuthorizationFailed),
		errors.Is(err, kerr.GroupAuthorizationFailed), errors.Is(err, kerr.TransactionalIDAuthorizationFailed),
		errors.Is(err, kerr.SaslAuthenticationFailed), errors.Is(err, kerr.UnsupportedVersion):
		return fmt.Errorf("%w: %w", err, driver.ErrPermanent)
	case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, kerr.UnknownTopicID):
		return fmt.Errorf("%w: %w", err, driver.ErrNotFound)
	}
	return err
}

// slogLogger hands franz-go's log lines to slog: warnings and errors as
// they are, info at debug level (franz-go is chatty at info), and the one
// warning the adapter itself causes at debug level (expectedWarning).
type slogLogger struct{ l *slog.Logger }

// expectedWarning is what franz-go logs when a commit's answer arrives while
// it tracks no offsets of its own for the group session. With autocommit
// off that happens for the commit of the start offsets that the adapter
// makes in OnPartitionsAssigned, before franz-go starts tracking: the
// commit succeeded and its result was checked (commitSync), so it is no
// warning. A commit that really fails is reported by the adapter.
const expectedWarning = "received an OffsetCommitResponse after our group session has ended, unable to handle this (were we kicked from the group?)"

func (s slogLogger) Level() kgo.LogLevel {
	if s.l.Enabled(context.Background(), slog.LevelDebug) {
		return kgo.LogLevelInfo
	}
	return kgo.LogLevelWarn
}

func (s slogLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lv := slog.LevelDebug
	switch level {
	case kgo.LogLevelError:
		lv = slog.LevelError
	case kgo.LogLevelWarn:
		if msg != expectedWarning {
			lv = slog.LevelWarn
		}
	}
	s.l.Log(context.Background(), lv, "omnibus: kafka: franz-go: "+msg, keyvals...)
}

// As exposes the franz-go clients for pubsub.Client.As: a **kgo.Client
// gets the client that produces and administers (not the consumers'), a
// **kadm.Client its admin client.
func (b *Broker) As(target any) bool {
	switch t := target.(type) {
	case **kgo.Client:
		*t = b.cl
	case **kadm.Client:
		*t = b.adm
	default:
		return false
	}
	return true
}

// Open connects to the broker at url and returns a portable client: the
// same as pubsub.Open with this adapter's scheme (kafka://); a URL of
// another scheme is an error wrapping pubsub.ErrInvalid.
func Open(ctx context.Context, url string) (*pubsub.Client, error) {
	return pubsub.OpenScheme(ctx, url, Scheme)
}
