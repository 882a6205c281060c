// Package driver defines the small interfaces a broker adapter implements.
//
// Users never call a driver directly: they hold the portable types of package
// pubsub, which validate input, generate IDs, batch sends and acks, own the
// closed state and wrap errors, once for every broker. An adapter only moves
// batches of messages in and out of its broker.
//
// The contracts below are what package pubsub relies on; the conformance
// suite in pubsub/pubsubtest proves an adapter keeps them.
//
// # Constructors
//
// Every adapter module exports Open(ctx, url) (*pubsub.Client, error), the
// same as pubsub.Open for its own schemes (pubsub.OpenScheme), and registers
// its schemes with pubsub.Register. An adapter that can run on a client the
// user brings exports New(ctx, client, Options) (*Broker, error), leaving
// the client to the caller (postgres: *pgxpool.Pool). An adapter that must
// own and re-dial its connections takes the address instead (Dial(ctx,
// address, Options), or New(ctx, Options) with the addresses in Options);
// one without a network takes only Options (memory.New).
//
// # Names
//
// Capabilities.TopicNames and GroupNames say which names the broker accepts
// beyond the portable rule (not empty, valid UTF-8, no NUL); the portable
// layer checks them, so an adapter need not check them again.
//
// # Revocation
//
// A broker may take deliveries away from a subscription before they are
// settled: Kafka moves a partition to another group member on a rebalance,
// and that member delivers again everything past the committed offset. An
// adapter with such a scope (a partition assignment, a channel) creates one
// Lease for it, sets Message.Lease on every message it receives in that
// scope, and calls Revoke when the scope ends, before it commits what was
// acked there. From then on the portable layer never hands out a buffered
// message whose Lease is revoked (it drops it: the scope's next owner
// delivers it again), and Ack or Nack of a delivery whose Lease is revoked
// returns ErrRevoked instead of nil (the ack could not count). Adapters
// whose deliveries cannot be taken away leave Message.Lease nil.
//
// # Optional interfaces
//
// Beyond Broker and Subscription an adapter may implement optional admin
// interfaces that tools use: TopicDeleter (remove throwaway topics, omnibus
// bench) and Inspector (list topics and groups with their lag, omnibus
// topics and omnibus groups); package pubsub reaches them through
// Client.DeleteTopic, Client.Topics and Client.Groups and answers
// ErrUnsupported for an adapter without them. An AckID may implement
// As(target any) bool to expose broker-specific details of a delivery
// (Kafka: its partition and offset) through pubsub.Delivery.As.
package driver

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
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
	// ErrRevoked reports an Ack or Nack of a delivery whose Lease was
	// revoked (see Revocation): it will be delivered again, possibly to
	// another member of the group.
	ErrRevoked = errors.New("omnibus: delivery's partition was revoked")
)

// Lease is the hold of a subscription on the scope its messages came from
// (see Revocation in the package documentation). The zero value is a live
// lease; a nil *Lease is never revoked. It is safe for concurrent use.
type Lease struct{ revoked atomic.Bool }

// Revoke ends the lease; it is idempotent.
func (l *Lease) Revoke() { l.revoked.Store(true) }

// Revoked reports whether Revoke was called (false for a nil Lease).
func (l *Lease) Revoked() bool { return l != nil && l.revoked.Load() }

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
	// Lease, set on receive by adapters whose deliveries can be revoked,
	// is the scope the message came from (nil: never revoked).
	Lease *Lease
}

// AckID identifies one delivery to its adapter. It may implement
// As(target any) bool (see Optional interfaces).
type AckID any

// Capabilities describes what a broker really does, so that switching
// brokers by configuration cannot silently change behaviour.
type Capabilities struct {
	// OrderingPerKey: messages published with the same non-empty Key are
	// delivered to a group in publish order (first deliveries), also when
	// the group has competing members. A message nacked through the
	// portable API may come back after its successors; the router's
	// ordered lanes never nack while they run (they hold the key).
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
	// Broker names the broker in errors and `omnibus doctor` ("kafka").
	Broker string
	// TopicNames and GroupNames are the topic and consumer group names the
	// broker accepts. The portable layer checks them in Publish and
	// Subscribe, after the portable rule (see NameRule).
	TopicNames NameRule
	GroupNames NameRule
}

// NameRule is what a broker accepts as a topic or group name beyond the
// portable rule that pubsub.ValidateTopic checks for every broker (not
// empty, valid UTF-8, no NUL byte). The zero value accepts every name.
type NameRule struct {
	// MaxBytes is the longest name in bytes (0: no limit).
	MaxBytes int
	// Pattern is a regular expression (RE2 syntax) that the whole name
	// must match ("": any name).
	Pattern string
	// Allowed says in words what Pattern accepts, for error messages and
	// `omnibus doctor`.
	Allowed string
}

// String describes the rule: "any name" for the zero value, otherwise the
// byte limit and Allowed.
func (r NameRule) String() string {
	switch {
	case r.MaxBytes == 0 && r.Allowed == "":
		return "any name"
	case r.MaxBytes == 0:
		return r.Allowed
	case r.Allowed == "":
		return fmt.Sprintf("at most %d bytes", r.MaxBytes)
	}
	return fmt.Sprintf("at most %d bytes; %s", r.MaxBytes, r.Allowed)
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
	// Traits tells the portable layer how to drive this adapter; it must
	// not block.
	Traits() Traits
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

// Traits tell the portable layer how to drive an adapter. Zero values mean
// the defaults.
type Traits struct {
	// MaxSendBatch is the most messages the portable layer puts in one
	// SendBatch call (default 500). Concurrent Publish calls to a topic are
	// merged into batches up to this size.
	MaxSendBatch int
	// MaxConcurrentSends is the most SendBatch calls in flight per topic
	// (default 4). Calls beyond it queue and go out together in the next
	// batch.
	MaxConcurrentSends int
	// GroupSends asks for group commit: a Publish call is sent at once
	// only when no SendBatch is in flight for its topic; otherwise it waits
	// and goes out with every call that queued meanwhile when the send in
	// flight returns, and a further concurrent SendBatch (up to
	// MaxConcurrentSends) starts only while a full batch waits. Before it
	// cuts the next batch, the portable layer waits (blocked, at most half
	// the last send's duration and 200µs) until the callers that send
	// released have queued their next calls, so that a steady set of
	// concurrent callers shares one send per round trip. For
	// adapters whose SendBatch has a high fixed cost per call (a network
	// round trip the broker answers per request), where fewer, larger
	// batches beat more concurrent ones.
	GroupSends bool
	// PromptSends says that SendBatch returns soon after its context ends
	// (at most one local round of cleanup later, never after a network or
	// broker timeout), whatever the broker does meanwhile. The portable
	// layer then runs a Publish call that would start a send of its own
	// messages alone (no other call queued, a send slot free; with
	// GroupSends, no send in flight) on the caller's goroutine with the
	// caller's context, instead of handing it to a sender goroutine and
	// waiting for the answer: two goroutine switches and a context fewer
	// per call. Without it a Publish call whose context ends returns at
	// once while its send goes on in the background.
	PromptSends bool
	// InlineAcks says that SendAcks is cheap local bookkeeping (marking an
	// offset that a background loop commits, recording a tag that a
	// flusher sends): the portable layer then calls SendAcks from
	// Delivery.Ack on the caller's goroutine, one delivery at a time,
	// instead of batching acks through its background goroutine. SendAcks
	// must then be safe for concurrent use and must not block on the
	// network; it is never called once Close has begun. Nacks always go
	// through the background goroutine.
	InlineAcks bool
	// CheckMessage, when set, checks a message against limits of the
	// broker's wire format beyond its payload size (header names, header
	// sizes, ID or key lengths). The portable layer calls it for every
	// message of a Publish call before anything is sent or batched with
	// other callers' messages; an error (wrapping ErrInvalid and naming the
	// field and the limit) fails that call alone. It must be cheap and must
	// not block.
	CheckMessage func(m *Message) error
}

// Transient marks err as worth retrying: the portable layer retries a
// ReceiveBatch, SendAcks or SendNacks that failed with it (with backoff)
// instead of ending the subscription or giving up. Adapters wrap errors of
// a lost connection, a broker failover or a cancelled transaction with it.
func Transient(err error) error {
	if err == nil {
		return nil
	}
	return &transientError{err}
}

// IsTransient reports whether err, or an error it wraps, was marked by
// Transient.
func IsTransient(err error) bool {
	var t *transientError
	return errors.As(err, &t)
}

type transientError struct{ err error }

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

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
