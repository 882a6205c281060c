// Package rocketmq is the omnibus adapter for Apache RocketMQ 5 through its
// proxy, on the gRPC client github.com/apache/rocketmq-clients/golang/v5,
// behind rocketmq:// URLs:
//
//	rocketmq://127.0.0.1:8081                                   one proxy
//	rocketmq://10.0.0.5:8081?namesrv=10.0.0.6:9876&brokers=10.0.0.7:10911&queues=8
//
// The host is the proxy's gRPC endpoint. namesrv and brokers are optional:
// with both, the adapter creates topics and consumer groups itself over
// RocketMQ's remoting protocol (the gRPC API has no administration).
//
// Why the gRPC client: the remoting client (rocketmq-client-go/v2, v2.1.2
// and its 2025 snapshot) has data races inside itself under go test -race
// (rmqClient.close written by Shutdown while a broker-triggered rebalance
// reads it in InvokeSync), and its push consumer rebalances queues by
// client-side offsets, so acknowledged messages come again to another
// member after a rebalance or a restart. The proxy's simple consumer
// ("pop") keeps acknowledgements per message on the broker instead.
//
// # Model
//
// A topic is a RocketMQ topic (1 to 127 characters from a-z, A-Z, 0-9, '_'
// and '-'); a consumer group is a RocketMQ consumer group (same rule, at
// most 120 characters): every group gets each message, the members of one
// group share them message by message. An anonymous subscription (no Group)
// is a group "omnibus-anon-<random>" of its own.
//
// With namesrv and brokers set, the first Publish or Subscribe on a topic
// creates it on every listed broker with queues queues (message type
// NORMAL) and waits until the name server routes it, before the proxy is
// asked about it (the proxy caches "no such topic" for a while). Subscribe
// also creates the group with max_reconsume retries and, for a group
// without a position, sets its start on every queue: the queue's end
// (start=newest, the default) or its first message (start=oldest, or
// pubsub.FromOldest()). So a new group gets exactly what is published
// after Subscribe returns, or everything still stored.
// Without them, topics and groups must exist (the broker's
// autoCreateSubscriptionGroup creates groups with 16 retries), Publish or
// Subscribe on an unknown topic fails with driver.ErrNotFound, and a new
// group starts where the broker puts it (the newest message, or the first
// one while the queue's first message is still in memory).
//
// # Messages
//
// Payload is the RocketMQ body. ID is the property "omnibus-id" and the
// message's RocketMQ key (for lookup by key); Key is the property
// "omnibus-key"; metadata entries are properties prefixed "omnibus-m-".
// PublishedAt is the message's born time; Attempt is the delivery attempt
// the broker counts. A message from another publisher has its RocketMQ
// message ID as ID and no Key or metadata. The gRPC client sends at most
// 2 MiB per message (MaxMessageSize is 2 MiB less room for properties).
//
// # Publishing
//
// Each message is one Send, answered by the broker once stored (flush and
// replication as the broker is configured); a batch goes out as concurrent
// sends.
//
// # Receiving
//
// Each subscription is a simple consumer: a loop receives up to prefetch
// messages, each invisible to the group for invisible (default 30 s) while
// the application holds it. Ack acknowledges the one message on the broker;
// Nack(d) makes it visible again after d (at least 1 s; the broker's revive
// scan adds up to a few seconds), counting an attempt. A message neither
// acked nor nacked within invisible is delivered again, to any member.
// After max_reconsume redeliveries the broker moves it to the dead-letter
// topic "%DLQ%<group>". Close makes every held delivery visible again
// after 1 s (as a nack does); a consumer that dies has its held messages
// redelivered when their invisibility ends. Close cancels the subscription's
// long poll (up to 10 s) in flight: the proxy does not withdraw it, so a
// message published to the group in those seconds is taken by the closed
// subscription and delivered to the group only after invisible (seen: 35 s
// with the default 30 s).
//
// Ordering per key is not promised: messages of one key are spread over
// queues and redelivered independently.
//
// # Transport
//
// The client library dials the proxy with TLS, without verifying the
// proxy's certificate, unless the process's environment has
// rocketmq.client.enableSsl=false (plaintext); that choice is
// process-wide and read at start. The client's own log goes to
// $rocketmq.client.logRoot (default: omnibus-rocketmq-client under the
// temporary directory) at level $rocketmq.client.logLevel (default error).
//
// # URL parameters
//
//	namesrv=H:P[,H:P]     name servers, for topic routes (with brokers)
//	brokers=H:P[,H:P]     broker addresses where topics and groups are created (default none)
//	queues=N              queues of a created topic, 1..256 (default 4)
//	start=newest|oldest   where a new group starts (default newest; see above)
//	max_reconsume=N       redeliveries before the broker dead-letters a message, 1..16 (default 16)
//	prefetch=N            deliveries held per subscription, 1..1000 (default 64)
//	invisible=D           how long a held delivery stays hidden from the group, 10s..12h (default 30s)
//	send_timeout=D        one Send, one administrative request, topic routing (default 10s)
//	access_key=S, secret_key=S   ACL credentials (the secret is never printed)
//
// An unknown parameter, or a bad value, is an error naming it.
package rocketmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	rmq "github.com/apache/rocketmq-clients/golang/v5"
	"github.com/apache/rocketmq-clients/golang/v5/credentials"
	v2 "github.com/apache/rocketmq-clients/golang/v5/protocol/v2"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Scheme is the URL scheme of this adapter.
const Scheme = "rocketmq"

func init() {
	// The client logs to a file from its own init; unless the process
	// chose otherwise, errors only, under the temporary directory.
	if os.Getenv("rocketmq.client.logRoot") == "" {
		_ = os.Setenv("rocketmq.client.logRoot", filepath.Join(os.TempDir(), "omnibus-rocketmq-client"))
	}
	if os.Getenv("rocketmq.client.logLevel") == "" {
		_ = os.Setenv("rocketmq.client.logLevel", "error")
	}
	rmq.ResetLogger()
	pubsub.Register(Scheme, openURL)
}

// Property names the adapter writes.
const (
	propID       = "omnibus-id"
	propKey      = "omnibus-key"
	propMetaPref = "omnibus-m-"
	propEmpty    = "omnibus-empty" // "1": the payload is empty (RocketMQ refuses an empty body)
)

// maxMessageSize is the gRPC client's send limit (2 MiB) minus room for
// properties.
const maxMessageSize = 2<<20 - 64<<10

// Options configure a Broker. Zero values mean the documented defaults.
type Options struct {
	Endpoint     string   // the proxy's gRPC address, host:port
	NameServers  []string // for topic routes, with Brokers
	Brokers      []string // where topics and groups are created
	Queues       int
	StartOldest  bool
	MaxReconsume int
	Prefetch     int
	Invisible    time.Duration
	SendTimeout  time.Duration
	AccessKey    string
	SecretKey    string
	Logger       *slog.Logger
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

func checkName(what, s string, max int) error {
	if len(s) == 0 || len(s) > max || !nameRE.MatchString(s) {
		return fmt.Errorf("rocketmq: %s %q: want 1 to %d characters from a-z, A-Z, 0-9, '_' and '-': %w", what, s, max, driver.ErrInvalid)
	}
	return nil
}

func splitHosts(what, s string) ([]string, error) {
	var out []string
	for _, h := range strings.Split(s, ",") {
		if _, _, err := net.SplitHostPort(h); err != nil {
			return nil, fmt.Errorf("rocketmq: %s %q: want host:port: %w", what, h, driver.ErrInvalid)
		}
		out = append(out, h)
	}
	return out, nil
}

func openURL(ctx context.Context, raw string) (driver.Broker, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("rocketmq: bad URL: %w", driver.ErrInvalid)
	}
	if u.Scheme != Scheme {
		return nil, fmt.Errorf("rocketmq: URL scheme %q: want %q: %w", u.Scheme, Scheme, driver.ErrInvalid)
	}
	if u.User != nil {
		return nil, fmt.Errorf("rocketmq: credentials in the URL's user info: use access_key and secret_key: %w", driver.ErrInvalid)
	}
	o := Options{Endpoint: u.Host}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return nil, fmt.Errorf("rocketmq: proxy endpoint %q: want host:port: %w", u.Host, driver.ErrInvalid)
	}
	p := driver.NewParams(Scheme, u.Query())
	ns := p.String("namesrv", "")
	bs := p.String("brokers", "")
	o.Queues = p.Int("queues", 4, 1, 256)
	o.StartOldest = p.Enum("start", "newest", "newest", "oldest") == "oldest"
	o.MaxReconsume = p.Int("max_reconsume", 16, 1, 16)
	o.Prefetch = p.Int("prefetch", 64, 1, 1000)
	o.Invisible = p.Duration("invisible", 30*time.Second)
	o.SendTimeout = p.Duration("send_timeout", 10*time.Second)
	o.AccessKey = p.String("access_key", "")
	o.SecretKey = p.String("secret_key", "")
	if err := p.Err(); err != nil {
		return nil, err
	}
	if ns != "" {
		if o.NameServers, err = splitHosts("namesrv", ns); err != nil {
			return nil, err
		}
	}
	if bs != "" {
		if o.Brokers, err = splitHosts("brokers", bs); err != nil {
			return nil, err
		}
	}
	return Dial(ctx, o)
}

// Broker is a RocketMQ connection through a proxy: one producer, and a
// simple consumer per subscription.
type Broker struct {
	o   Options
	log *slog.Logger
	adm *admin

	prodMu sync.Mutex
	prod   rmq.Producer // started by the first publish

	mu     sync.Mutex
	topics map[string]bool // topics known to be routed
	closed bool
}

func (o Options) config(group string) *rmq.Config {
	return &rmq.Config{
		Endpoint:      o.Endpoint,
		ConsumerGroup: group,
		Credentials:   &credentials.SessionCredentials{AccessKey: o.AccessKey, AccessSecret: o.SecretKey},
	}
}

// Dial checks o; the producer starts with the first publish.
func Dial(_ context.Context, o Options) (*Broker, error) {
	if _, _, err := net.SplitHostPort(o.Endpoint); err != nil {
		return nil, fmt.Errorf("rocketmq: Options.Endpoint %q: want host:port: %w", o.Endpoint, driver.ErrInvalid)
	}
	for _, b := range append(append([]string(nil), o.Brokers...), o.NameServers...) {
		if _, _, err := net.SplitHostPort(b); err != nil {
			return nil, fmt.Errorf("rocketmq: Options.Brokers/NameServers: %q: want host:port: %w", b, driver.ErrInvalid)
		}
	}
	if (len(o.Brokers) == 0) != (len(o.NameServers) == 0) {
		return nil, fmt.Errorf("rocketmq: namesrv and brokers go together (topic creation needs both): %w", driver.ErrInvalid)
	}
	if (o.AccessKey == "") != (o.SecretKey == "") {
		return nil, fmt.Errorf("rocketmq: access_key and secret_key go together: %w", driver.ErrInvalid)
	}
	if o.Queues == 0 {
		o.Queues = 4
	}
	if o.MaxReconsume == 0 {
		o.MaxReconsume = 16
	}
	if o.Prefetch == 0 {
		o.Prefetch = 64
	}
	if err := driver.DefaultDurations("rocketmq",
		driver.DurationOption{Name: "SendTimeout", Value: &o.SendTimeout, Default: 10 * time.Second},
		driver.DurationOption{Name: "Invisible", Value: &o.Invisible, Default: 30 * time.Second},
	); err != nil {
		return nil, err
	}
	if o.Invisible < 10*time.Second || o.Invisible > 12*time.Hour {
		return nil, fmt.Errorf("rocketmq: invisible %v: want 10s to 12h (the proxy's range): %w", o.Invisible, driver.ErrInvalid)
	}
	b := &Broker{o: o, log: o.Logger, topics: map[string]bool{}, adm: &admin{ak: o.AccessKey, sk: o.SecretKey}}
	if b.log == nil {
		b.log = slog.Default()
	}
	return b, nil
}

// producer returns the Broker's producer, started on first use with topic
// (the client finishes its start only once it has a route to a broker).
func (b *Broker) producer(ctx context.Context, topic string) (rmq.Producer, error) {
	b.prodMu.Lock()
	defer b.prodMu.Unlock()
	if b.prod != nil {
		return b.prod, nil
	}
	prod, err := rmq.NewProducer(b.o.config(""), rmq.WithMaxAttempts(3), rmq.WithTopics(topic))
	if err != nil {
		return nil, fmt.Errorf("rocketmq: new producer: %w", err)
	}
	if err := start(ctx, b.o.SendTimeout, prod); err != nil {
		return nil, fmt.Errorf("rocketmq: start producer on proxy %s: %w", b.o.Endpoint, err)
	}
	b.prod = prod
	return prod, nil
}

// starter is a client of the gRPC library: Start has no deadline of its
// own (it waits for the proxy's settings).
type starter interface {
	Start() error
	GracefulStop() error
}

// start starts c within timeout (or ctx); a start that does not finish in
// time is stopped when it does.
func start(ctx context.Context, timeout time.Duration, c starter) error {
	done := make(chan error, 1)
	go func() { done <- c.Start() }()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		if err != nil {
			if err = rpcErr(err); errors.Is(err, driver.ErrNotFound) {
				return err
			}
			return driver.Transient(err)
		}
		return nil
	case <-ctx.Done():
		err := ctx.Err()
		go func() {
			if <-done == nil {
				_ = c.GracefulStop()
			}
		}()
		return err
	case <-t.C:
		go func() {
			if <-done == nil {
				_ = c.GracefulStop()
			}
		}()
		return driver.Transient(fmt.Errorf("no answer within %v", timeout))
	}
}

// Capabilities: persistence (the broker's store), nack delay
// (ChangeInvisibleDuration), attempt count, groups, and replay of a new
// group from the oldest message when the adapter sets groups' start
// (namesrv and brokers given).
func (b *Broker) Capabilities() driver.Capabilities {
	return driver.Capabilities{
		Persistence:    true,
		NackDelay:      true,
		Replay:         len(b.o.Brokers) > 0,
		Groups:         true,
		AttemptCount:   true,
		MaxMessageSize: maxMessageSize,
	}
}

// Traits: each send and each ack is one request to the proxy.
func (b *Broker) Traits() driver.Traits {
	return driver.Traits{
		MaxSendBatch:       256,
		MaxConcurrentSends: 4,
		CheckMessage:       checkMessage,
	}
}

// checkMessage rejects what the proxy refuses in properties: control
// characters in names and values, and empty names.
func checkMessage(m *driver.Message) error {
	bad := func(field, v string) error {
		for _, r := range v {
			if r < 0x20 || r == 0x7f {
				return fmt.Errorf("rocketmq: %s contains a control character (the proxy refuses them in properties): %w", field, driver.ErrInvalid)
			}
		}
		return nil
	}
	if err := bad("ID", m.ID); err != nil {
		return err
	}
	if err := bad("Key", m.Key); err != nil {
		return err
	}
	for k, v := range m.Metadata {
		if k == "" {
			return fmt.Errorf("rocketmq: metadata name is empty: %w", driver.ErrInvalid)
		}
		if err := bad(fmt.Sprintf("metadata name %q", k), k); err != nil {
			return err
		}
		if err := bad(fmt.Sprintf("metadata %q value", k), v); err != nil {
			return err
		}
	}
	return nil
}

// Close stops the producer.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.prodMu.Lock()
	prod := b.prod
	b.prodMu.Unlock()
	if prod == nil {
		return nil
	}
	if err := prod.GracefulStop(); err != nil {
		return fmt.Errorf("rocketmq: close: %w", err)
	}
	return nil
}

func (b *Broker) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// ensureTopic creates topic on the configured brokers (once per Broker) and
// waits until the name servers route it. It returns the route when
// needRoute, or when it had to wait for one. Without brokers it does
// nothing.
func (b *Broker) ensureTopic(ctx context.Context, topic string, needRoute bool) ([]queueRoute, error) {
	if len(b.o.Brokers) == 0 {
		return nil, nil
	}
	b.mu.Lock()
	known := b.topics[topic]
	b.mu.Unlock()
	if known && !needRoute {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, b.o.SendTimeout)
	defer cancel()
	if !known {
		for _, addr := range b.o.Brokers {
			if err := b.adm.createTopic(ctx, addr, topic, b.o.Queues); err != nil {
				return nil, driver.Transient(fmt.Errorf("rocketmq: create topic %q on broker %s: %w", topic, addr, err))
			}
		}
	}
	// The broker registers a new topic with the name servers at once, but
	// asynchronously: poll the route.
	wait := 20 * time.Millisecond
	var last error
	for {
		for _, ns := range b.o.NameServers {
			routes, err := b.adm.route(ctx, ns, topic)
			if err == nil && len(routes) > 0 {
				b.mu.Lock()
				b.topics[topic] = true
				b.mu.Unlock()
				return routes, nil
			}
			if err != nil {
				last = err
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, driver.Transient(fmt.Errorf("rocketmq: topic %q not routed by the name servers within %v (last: %v): %w", topic, b.o.SendTimeout, last, ctx.Err()))
		case <-t.C:
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// rpcErr maps the client's status errors: an unknown topic or group is
// driver.ErrNotFound.
func rpcErr(err error) error {
	var st *rmq.ErrRpcStatus
	if errors.As(err, &st) {
		switch v2.Code(st.Code) {
		case v2.Code_TOPIC_NOT_FOUND, v2.Code_CONSUMER_GROUP_NOT_FOUND:
			return fmt.Errorf("%w: %w", err, driver.ErrNotFound)
		}
	}
	return err
}

var errClosedBroker = fmt.Errorf("rocketmq: broker closed: %w", driver.ErrClosed)
