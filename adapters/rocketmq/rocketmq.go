// Package rocketmq is the omnibus adapter for Apache RocketMQ (name server
// and broker, over the remoting protocol, on
// github.com/apache/rocketmq-client-go/v2), behind rocketmq:// URLs:
//
//	rocketmq://127.0.0.1:9876                          one name server
//	rocketmq://10.0.0.5:9876,10.0.0.6:9876?brokers=10.0.0.7:10911&queues=8
//
// The hosts are name server addresses; brokers lists broker addresses where
// the adapter creates topics (and consumer groups' retry topics).
//
// # Model
//
// A topic is a RocketMQ topic (1 to 127 characters from a-z, A-Z, 0-9, '_'
// and '-'); a consumer group is a RocketMQ consumer group in clustering mode
// (same rule, at most 120 characters): every group gets each message, the
// members of one group share the topic's queues. An anonymous subscription
// (no Group) is a group "omnibus-anon-<random>" of its own.
//
// With brokers set, the first Publish or Subscribe on a topic creates it on
// every listed broker with queues read and write queues, and Subscribe
// creates the group's retry topic "%RETRY%<group>", then waits until the
// name server routes both (so the client's 20–30 s route timers are not on
// the path). Without brokers, Publish relies on the broker's
// autoCreateTopicEnable, and Subscribe to a topic the name server does not
// know fails with an error wrapping driver.ErrNotFound.
//
// A new group starts at the newest offset (start=newest) or the oldest
// (start=oldest, or pubsub.FromOldest()). The broker overrides "newest" for a
// queue whose first message is still in its memory: such a group then starts
// at that queue's first offset, so on a young topic a new group can also get
// messages published before it existed.
//
// # Messages
//
// Payload is the RocketMQ body. ID is the property "omnibus-id" and one of
// the message's RocketMQ keys (for lookup by key); Key is the property
// "omnibus-key" and the sharding key; metadata entries are properties
// prefixed "omnibus-m-". Property names and values must not contain the
// bytes 0x01 or 0x02 (RocketMQ's separators): Publish rejects them naming
// the field. PublishedAt is the broker's store time; Attempt is
// ReconsumeTimes + 1. A message from another publisher has its RocketMQ
// message ID as ID and no Key or metadata.
//
// # Publishing
//
// Messages without a Key go out as RocketMQ batches (SendSync, at most
// max_batch_bytes each); messages with a Key go out one by one (SendSync)
// through a hash queue selector on the Key, in order per key, so that all
// messages of a key land in one queue. Publish returns once the broker
// answered SEND_OK for every message (flush and replication as the broker
// is configured).
//
// # Receiving
//
// Each subscription is a push consumer (concurrently consuming, one message
// per callback). A delivery is held by its callback until Ack (the callback
// returns ConsumeSuccess) or Nack (ConsumeRetryLater), so acks are per
// message with no head-of-line blocking; the consumer commits offsets up to
// the oldest unacknowledged message every 5 s and on Close. Nack(d) uses the
// broker's delay levels (1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m
// 30m 1h 2h): the smallest level at least d (a delay of 0 is 1 s, more than
// 2 h is 2 h). After max_reconsume nacks the broker moves the message to
// the dead-letter topic "%DLQ%<group>". Close hands every delivery it still
// holds back to the broker (redelivered after 1 s, with its attempt counted;
// the client sends them back while it shuts down, so the committed offset
// can stay at the first of them and acked deliveries after it in its queue
// come again);
// a consumer that dies has its unacknowledged messages redelivered to the
// group from the last committed offset. At most prefetch deliveries are held
// per subscription topic.
//
// Ordering per key is not promised: RocketMQ keeps it only with an orderly
// consumer, which blocks a queue while one of its messages waits for a
// retry; this adapter consumes concurrently.
//
// # URL parameters
//
//	brokers=H:P[,H:P]     broker addresses where topics and retry topics are created (default none)
//	queues=N              queues of a created topic, 1..256 (default 4)
//	start=newest|oldest   where a new group starts (default newest; see above)
//	max_reconsume=N       nacks before the broker dead-letters a message, 1..16 (default 16)
//	prefetch=N            deliveries held per subscription topic, 1..1000 (default 64)
//	send_timeout=D        one SendSync, and topic creation (default 10s)
//	max_batch_bytes=N     largest batch body (default 3 MiB; the broker's maxMessageSize is 4 MiB)
//	access_key=S, secret_key=S   ACL credentials (the secret is never printed)
//	instance=S            instance name prefix of the clients (default "omnibus")
//
// An unknown parameter, or a bad value, is an error naming it.
package rocketmq

import (
	"context"

	"fmt"
	"log/slog"
	"net"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	rmq "github.com/apache/rocketmq-client-go/v2"
	"github.com/apache/rocketmq-client-go/v2/admin"
	"github.com/apache/rocketmq-client-go/v2/primitive"
	"github.com/apache/rocketmq-client-go/v2/producer"
	"github.com/apache/rocketmq-client-go/v2/rlog"
	"github.com/google/uuid"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Scheme is the URL scheme of this adapter.
const Scheme = "rocketmq"

func init() {
	rlog.SetLogLevel("error")
	pubsub.Register(Scheme, openURL)
}

// Property names the adapter writes.
const (
	propID       = "omnibus-id"
	propKey      = "omnibus-key"
	propMetaPref = "omnibus-m-"
	propEmpty    = "omnibus-empty" // "1": the payload is empty (RocketMQ refuses an empty body)
)

// maxMessageSize is the broker's default maxMessageSize (4 MiB) minus room
// for properties.
const maxMessageSize = 4<<20 - 64<<10

// Options configure a Broker. Zero values mean the documented defaults.
type Options struct {
	NameServers   []string
	Brokers       []string
	Queues        int
	StartOldest   bool
	MaxReconsume  int
	Prefetch      int
	SendTimeout   time.Duration
	MaxBatchBytes int
	AccessKey     string
	SecretKey     string
	Instance      string
	Logger        *slog.Logger
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

func checkName(what, s string, max int) error {
	if len(s) == 0 || len(s) > max || !nameRE.MatchString(s) {
		return fmt.Errorf("rocketmq: %s %q: want 1 to %d characters from a-z, A-Z, 0-9, '_' and '-': %w", what, s, max, driver.ErrInvalid)
	}
	return nil
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
	o := Options{}
	for _, h := range strings.Split(u.Host, ",") {
		if _, _, err := net.SplitHostPort(h); err != nil {
			return nil, fmt.Errorf("rocketmq: name server %q: want host:port: %w", h, driver.ErrInvalid)
		}
		o.NameServers = append(o.NameServers, h)
	}
	p := driver.NewParams(Scheme, u.Query())
	if b := p.String("brokers", ""); b != "" {
		o.Brokers = strings.Split(b, ",")
	}
	o.Queues = p.Int("queues", 4, 1, 256)
	o.StartOldest = p.Enum("start", "newest", "newest", "oldest") == "oldest"
	o.MaxReconsume = p.Int("max_reconsume", 16, 1, 16)
	o.Prefetch = p.Int("prefetch", 64, 1, 1000)
	o.SendTimeout = p.Duration("send_timeout", 10*time.Second)
	o.MaxBatchBytes = p.Int("max_batch_bytes", 3<<20, 1024, 4<<20)
	o.AccessKey = p.String("access_key", "")
	o.SecretKey = p.String("secret_key", "")
	o.Instance = p.String("instance", "omnibus")
	if err := p.Err(); err != nil {
		return nil, err
	}
	return Dial(ctx, o)
}

// Broker is a RocketMQ connection: one producer, one admin client, and a
// push consumer per subscription.
type Broker struct {
	o        Options
	log      *slog.Logger
	resolver primitive.NsResolver
	prod     rmq.Producer
	adm      admin.Admin

	mu     sync.Mutex
	topics map[string]bool // topics known to be routed
	closed bool
}

func (o Options) credentials() primitive.Credentials {
	return primitive.Credentials{AccessKey: o.AccessKey, SecretKey: o.SecretKey}
}

// Dial starts a producer and an admin client on the name servers.
func Dial(_ context.Context, o Options) (*Broker, error) {
	if len(o.NameServers) == 0 {
		return nil, fmt.Errorf("rocketmq: Options.NameServers is empty: %w", driver.ErrInvalid)
	}
	for _, b := range o.Brokers {
		if _, _, err := net.SplitHostPort(b); err != nil {
			return nil, fmt.Errorf("rocketmq: Options.Brokers: %q: want host:port: %w", b, driver.ErrInvalid)
		}
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
	if o.MaxBatchBytes == 0 {
		o.MaxBatchBytes = 3 << 20
	}
	if o.Instance == "" {
		o.Instance = "omnibus"
	}
	if err := driver.DefaultDurations("rocketmq", driver.DurationOption{Name: "SendTimeout", Value: &o.SendTimeout, Default: 10 * time.Second}); err != nil {
		return nil, err
	}
	b := &Broker{o: o, log: o.Logger, topics: map[string]bool{}}
	if b.log == nil {
		b.log = slog.Default()
	}
	b.resolver = primitive.NewPassthroughResolver(o.NameServers)
	popts := []producer.Option{
		producer.WithNsResolver(b.resolver),
		producer.WithGroupName("omnibus-producer"),
		producer.WithInstanceName(o.Instance + "-" + strings.ReplaceAll(uuid.NewString(), "-", "")),
		producer.WithQueueSelector(producer.NewHashQueueSelector()),
		producer.WithSendMsgTimeout(o.SendTimeout),
		producer.WithRetry(2),
		producer.WithDefaultTopicQueueNums(o.Queues),
	}
	aopts := []admin.AdminOption{admin.WithResolver(b.resolver)}
	if o.AccessKey != "" {
		popts = append(popts, producer.WithCredentials(o.credentials()))
		aopts = append(aopts, admin.WithCredentials(o.credentials()))
	}
	prod, err := rmq.NewProducer(popts...)
	if err != nil {
		return nil, fmt.Errorf("rocketmq: new producer: %w", err)
	}
	if err := prod.Start(); err != nil {
		return nil, fmt.Errorf("rocketmq: start producer: %w", err)
	}
	b.prod = prod
	adm, err := admin.NewAdmin(aopts...)
	if err != nil {
		_ = prod.Shutdown()
		return nil, fmt.Errorf("rocketmq: new admin client: %w", err)
	}
	b.adm = adm
	return b, nil
}

// Capabilities: persistence (the broker's store), nack delay (delay levels),
// attempt count, groups and replay of a new group from the oldest offset.
func (b *Broker) Capabilities() driver.Capabilities {
	return driver.Capabilities{
		Persistence:    true,
		NackDelay:      true,
		Replay:         true,
		Groups:         true,
		AttemptCount:   true,
		MaxMessageSize: maxMessageSize,
	}
}

// Traits: acks are local bookkeeping (a channel send to the callback that
// holds the delivery).
func (b *Broker) Traits() driver.Traits {
	return driver.Traits{
		MaxSendBatch:       256,
		MaxConcurrentSends: 4,
		InlineAcks:         true,
		CheckMessage:       checkMessage,
	}
}

func checkMessage(m *driver.Message) error {
	bad := func(field, v string) error {
		if strings.ContainsAny(v, "\x01\x02") {
			return fmt.Errorf("rocketmq: %s contains byte 0x01 or 0x02 (RocketMQ's property separators): %w", field, driver.ErrInvalid)
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

// Close shuts the producer and the admin client down.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	err := b.prod.Shutdown()
	if aerr := b.adm.Close(); err == nil {
		err = aerr
	}
	if err != nil {
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
// waits until the name server routes it. Without brokers it only checks
// the route when mustExist.
func (b *Broker) ensureTopic(ctx context.Context, topic string, queues int, mustExist bool) error {
	b.mu.Lock()
	known := b.topics[topic]
	b.mu.Unlock()
	if known {
		return nil
	}
	if len(b.o.Brokers) == 0 && !mustExist {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, b.o.SendTimeout)
	defer cancel()
	for _, addr := range b.o.Brokers {
		err := b.adm.CreateTopic(ctx, admin.WithTopicCreate(topic), admin.WithBrokerAddrCreate(addr),
			admin.WithReadQueueNums(queues), admin.WithWriteQueueNums(queues))
		if err != nil {
			return driver.Transient(fmt.Errorf("rocketmq: create topic %q on broker %s: %w", topic, addr, err))
		}
	}
	// The broker registers a new topic with the name server at once, but
	// asynchronously: poll the route.
	wait := 50 * time.Millisecond
	for {
		mqs, err := b.adm.FetchPublishMessageQueues(ctx, topic)
		if err == nil && len(mqs) > 0 {
			break
		}
		if len(b.o.Brokers) == 0 {
			return fmt.Errorf("rocketmq: topic %q has no route on the name servers (set brokers= to create topics): %w", topic, driver.ErrNotFound)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return driver.Transient(fmt.Errorf("rocketmq: topic %q created but not routed by the name servers within %v: %w", topic, b.o.SendTimeout, ctx.Err()))
		case <-t.C:
		}
		wait = min(2*wait, time.Second)
	}
	b.mu.Lock()
	b.topics[topic] = true
	b.mu.Unlock()
	return nil
}

var errClosedBroker = fmt.Errorf("rocketmq: broker closed: %w", driver.ErrClosed)
