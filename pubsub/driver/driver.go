// Package driver defines the small interfaces a broker adapter implements.
//
// Users never call a driver directly: they hold the portable types of package
// pubsub, which validate input, generate IDs, batch sends and acks, own the
// closed state and wrap errors, once for every broker. An adapter only moves
// batches of messages in and out of its broker.
//
// The contracts below are what package pubsub relies on; the conformance
// suite in pubsub/pubsubtest proves an adapter keeps them.
package driver

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors shared by the portable layer and the adapters. Package
// pubsub re-exports them; adapters wrap them (fmt.Errorf("...: %w", ErrX)) so
// that callers can branch with errors.Is.
var (
	// ErrClosed reports use of a client, subscription or delivery after Close.
	ErrClosed = errors.New("omnibus: closed")
	// ErrNotFound reports a topic, queue or group that does not exist and
	// that the adapter was not allowed to create.
	ErrNotFound = errors.New("omnibus: not found")
	// ErrPermanent marks an error that retrying cannot fix.
	ErrPermanent = errors.New("omnibus: permanent error")
	// ErrInvalid reports bad input: an empty topic, a nil message, an
	// oversized payload, an unknown URL parameter.
	ErrInvalid = errors.New("omnibus: invalid argument")
	// ErrUnsupported reports that an adapter cannot honour a requirement
	// (see Capabilities and the ?require= URL parameter).
	ErrUnsupported = errors.New("omnibus: unsupported")
)

// Message is a message as it crosses the driver boundary.
//
// On send, ID is never empty (the portable layer fills it) and Topic,
// PublishedAt, Attempt and AckID are unset. On receive the adapter fills
// every field it can; AckID is opaque to the portable layer and is handed
// back to SendAcks or SendNacks exactly as received.
type Message struct {
	ID          string
	Key         string
	Payload     []byte
	Metadata    map[string]string
	Topic       string
	PublishedAt time.Time
	Attempt     int
	AckID       AckID
}

// AckID identifies one delivery to its adapter.
type AckID any

// Capabilities describes what a broker really does, so that switching
// brokers by configuration cannot silently change behaviour.
type Capabilities struct {
	// OrderingPerKey: messages published with the same non-empty Key are
	// delivered to a group in publish order (first deliveries; a nacked
	// message is redelivered after its successors on every broker).
	OrderingPerKey bool
	// Persistence: messages and group positions survive a subscriber
	// restart and a broker restart.
	Persistence bool
	// NackDelay: the broker itself schedules redelivery after a Nack delay.
	// When false the adapter emulates the delay in process (the message is
	// still redelivered, but only while the subscription stays open).
	NackDelay bool
	// Replay: a new group can start from the oldest retained message.
	Replay bool
	// Groups: named consumer groups, competing within and fanning out across.
	Groups bool
	// AttemptCount: Message.Attempt counts redeliveries across restarts
	// (not only within one subscription).
	AttemptCount bool
	// MaxMessageSize is the largest payload the broker accepts, in bytes;
	// 0 means no known limit.
	MaxMessageSize int
}

// SubscriptionOptions are the portable subscription settings an adapter
// receives. Zero values mean the adapter's defaults.
type SubscriptionOptions struct {
	// Group is the consumer group. Empty means an anonymous group private
	// to this subscription (every message published while it is open).
	Group string
	// StartFromOldest asks a new group to begin at the oldest retained
	// message instead of the newest (only where Capabilities.Replay).
	StartFromOldest bool
	// MaxBatch is the most messages the portable layer will ask for in one
	// ReceiveBatch call.
	MaxBatch int
}

// Broker is the adapter's connection to one broker.
type Broker interface {
	// SendBatch publishes msgs to topic. It returns nil only when the broker
	// has accepted every message (durably, where the broker can say so). On
	// error some messages may have been published; the error should name
	// the first one that failed. Messages with the same Key in one batch must
	// keep their order. SendBatch is called concurrently.
	//
	// The Message structs (and the slice) are the adapter's once SendBatch
	// is called: it may keep or modify them (the portable layer allocates
	// them per call and never looks at them again). The Payload bytes and
	// Metadata map they point to still belong to the publisher: an adapter
	// that keeps them past the call must copy them.
	SendBatch(ctx context.Context, topic string, msgs []*Message) error
	// OpenSubscription starts receiving from topic. It is called once per
	// portable Subscription.
	OpenSubscription(ctx context.Context, topic string, opts SubscriptionOptions) (Subscription, error)
	// Capabilities reports what this broker honours; it must not block.
	Capabilities() Capabilities
	// Close releases the connection. Subscriptions are closed first by the
	// portable layer.
	Close() error
}

// Subscription is one stream of deliveries for a (topic, group).
type Subscription interface {
	// ReceiveBatch returns between 1 and max messages. It blocks until at
	// least one is available or ctx ends. It may return an empty batch and
	// nil error (the portable layer calls again). It is never called
	// concurrently with itself.
	//
	// The portable layer is done with the returned slice and Message structs
	// when it next calls ReceiveBatch (or Close): it copies the fields it
	// keeps, so an adapter may reuse them for its next batch. The Payload
	// bytes and Metadata maps are handed to the consumer and must not be
	// reused.
	ReceiveBatch(ctx context.Context, max int) ([]*Message, error)
	// SendAcks acknowledges deliveries: they must not be redelivered.
	// SendAcks and SendNacks must not keep ids after they return (the
	// portable layer reuses the slice).
	SendAcks(ctx context.Context, ids []AckID) error
	// SendNacks gives deliveries back for redelivery no sooner than delay.
	SendNacks(ctx context.Context, ids []AckID, delay time.Duration) error
	// Close stops receiving. Deliveries not yet acked must be redelivered
	// (to this group's other members, or after a restart): at-least-once.
	Close() error
}

// InlineAcker may be implemented by a Subscription whose acks are cheap,
// local bookkeeping (Kafka: marking an offset that a background loop commits
// later). The portable layer then calls AckInline from Delivery.Ack, on the
// caller's goroutine, instead of batching the ack through its background
// ack goroutine into SendAcks; nacks still go through SendNacks. AckInline
// must be safe for concurrent use and must not block on the network; it is
// never called once Close has begun. An error is logged; the message is then redelivered as after any
// failed ack.
type InlineAcker interface {
	AckInline(id AckID) error
}

// DirectReceiver may be implemented by a Subscription whose ReceiveBatch
// only takes messages the broker already pushed into the process (bounded
// by a broker-side prefetch, as with AMQP basic.qos), so that a fetch-ahead
// goroutine in the portable layer would add nothing but a goroutine
// hand-off per batch. When DirectReceive reports true, the portable layer
// runs no fetch loop: Receive calls ReceiveBatch itself, on the caller's
// goroutine, one caller at a time, with a context that ends when the
// caller's does or when Close begins. ReceiveBatch must then return
// promptly when its context ends.
type DirectReceiver interface {
	DirectReceive() bool
}

// Retryable may be implemented by an error an adapter returns from
// ReceiveBatch to say that the portable layer should retry (with backoff)
// instead of ending the subscription. Errors that do not implement it are
// terminal only if they wrap ErrClosed, ErrNotFound, ErrPermanent or
// ErrInvalid; everything else is retried.
type Retryable interface{ Retryable() bool }

// SendTuning may be implemented by a Broker to tune how the portable layer
// batches concurrent Publish calls into SendBatch calls.
type SendTuning interface {
	// SendBatching returns the largest batch (in messages) and the most
	// concurrent SendBatch calls per topic. Zero means the default.
	SendBatching() (maxBatch, maxConcurrency int)
}

// SendGrouping may be implemented by a Broker whose SendBatch has a high
// fixed cost per call (a network request and the broker's work on it), so
// that fewer, larger batches beat more concurrent ones: the portable layer
// then sends a Publish call at once only when no SendBatch is in flight for
// its topic; otherwise the call waits and goes out with every call that
// queued meanwhile when the send in flight returns (group commit), and a
// further concurrent SendBatch (up to SendTuning's maxConcurrency) starts
// only while a full batch waits. Before cutting the next batch the portable
// layer briefly lets the callers the last send released queue again
// (bounded by half that send's duration), so a steady set of concurrent
// callers shares one request per round trip.
type SendGrouping interface {
	GroupSends() bool
}

// Opener opens a Broker from a URL. Adapters register one per scheme with
// pubsub.Register.
type Opener func(ctx context.Context, rawURL string) (Broker, error)

// TopicDeleter is implemented by adapters that can remove a topic and what
// the broker keeps for it: its consumer groups, their queues and the
// messages waiting in them. It is for tools that make throwaway topics
// (omnibus bench). groups names the groups to remove where the broker
// cannot list them (RabbitMQ); adapters that can list them remove all.
// Close the topic's subscriptions first.
type TopicDeleter interface {
	DeleteTopic(ctx context.Context, topic string, groups []string) error
}
