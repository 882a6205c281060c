package rabbitmq

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// maxName is the longest AMQP exchange or queue name.
const maxName = 255

// shorten keeps a name within maxName bytes: a longer one keeps its first
// 200 bytes and ends with a hash of the whole name.
func shorten(name string) string {
	if len(name) <= maxName {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return name[:200] + "~" + hex.EncodeToString(sum[:12])
}

func queueName(topic, group string) string { return shorten(topic + "." + group) }

// maxPartitions bounds partitions=N.
const maxPartitions = 256

func partitionQueueName(topic, group string, i int) string {
	return shorten(topic + "." + group + ".p" + strconv.Itoa(i))
}

// hashExchangeName is the consistent-hash exchange of a partitioned group.
func hashExchangeName(topic, group string) string { return shorten(topic + "." + group + ".by-key") }

// groupQueues returns the queues a group's members consume.
func (t *topology) groupQueues(topic, group string) []string {
	n := t.b.opts.Partitions
	if n == 0 {
		return []string{queueName(topic, group)}
	}
	qs := make([]string, n)
	for i := range qs {
		qs[i] = partitionQueueName(topic, group, i)
	}
	return qs
}

// delayBucket rounds d up to two significant digits of milliseconds (at
// least 1ms), so one delay queue serves many nearby delays and a message
// never comes back sooner than asked.
func delayBucket(d time.Duration) int64 {
	ms := int64(math.Ceil(float64(d) / float64(time.Millisecond)))
	if ms < 1 {
		ms = 1
	}
	scale := int64(1)
	for ms/scale >= 100 {
		scale *= 10
	}
	return (ms + scale - 1) / scale * scale
}

func delayQueueName(queue string, ms int64) string {
	return shorten(queue + ".delay." + strconv.FormatInt(ms, 10))
}

// topicNames is what the adapter accepts as a topic: the topic is the
// exchange's name, at most 255 bytes and not in RabbitMQ's reserved "amq."
// namespace. Group names are free: queue names derived from topic and group
// longer than 255 bytes are shortened with a hash (shorten).
var topicNames = driver.NameRule{
	MaxBytes: maxName,
	Pattern:  `(?s:[^a].*|a|a[^m].*|am|am[^q].*|amq|amq[^.].*)`,
	Allowed:  `not starting with "amq." (reserved by RabbitMQ)`,
}

// validTopic checks topicNames' reserved prefix for the topology declared
// from Options (Publish and Subscribe get the check from the portable
// layer).
func validTopic(topic string) error {
	if strings.HasPrefix(topic, "amq.") {
		return fmt.Errorf("rabbitmq: topic %q: names starting with \"amq.\" are reserved by RabbitMQ: %w", topic, driver.ErrInvalid)
	}
	return nil
}

// topology declares exchanges and queues once per connection generation
// (again after a reconnect, in case the broker lost them).
type topology struct {
	b  *Broker
	mu sync.Mutex
	// declared maps a key to the publish-connection generation and time of
	// its last successful declaration.
	declared map[string]declaration
}

type declaration struct {
	gen uint64
	at  time.Time
}

func newTopology(b *Broker) *topology {
	return &topology{b: b, declared: map[string]declaration{}}
}

func (t *topology) fresh(key string, gen uint64, maxAge time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	d, ok := t.declared[key]
	return ok && d.gen == gen && (maxAge == 0 || time.Since(d.at) < maxAge)
}

func (t *topology) mark(key string, gen uint64) {
	t.mu.Lock()
	t.declared[key] = declaration{gen: gen, at: time.Now()}
	t.mu.Unlock()
}

// forget drops cached declarations of topic so the next use declares again.
func (t *topology) forget(topic string) {
	t.mu.Lock()
	delete(t.declared, "x:"+topic)
	t.mu.Unlock()
}

func (t *topology) queueArgs() amqp.Table {
	return amqp.Table{"x-queue-type": t.b.opts.QueueType}
}

// ensureTopic declares the topic's exchange and the queues of the
// configured groups, on the publish connection.
func (t *topology) ensureTopic(ctx context.Context, topic string) error {
	if err := validTopic(topic); err != nil {
		return err
	}
	_, gen, err := t.b.pub.get(ctx)
	if err != nil {
		return err
	}
	key := "x:" + topic
	if t.fresh(key, gen, 0) {
		return nil
	}
	g, err := t.b.pub.withAdmin(ctx, func(ch *amqp.Channel) error {
		if err := declareExchange(ch, topic); err != nil {
			return err
		}
		for _, group := range t.b.opts.Groups {
			if err := t.declareGroupQueue(ch, topic, group); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	t.mark(key, g)
	return nil
}

func declareExchange(ch *amqp.Channel, topic string) error {
	if err := ch.ExchangeDeclare(topic, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		return declareErr(fmt.Sprintf("exchange %q (durable fanout)", topic), err)
	}
	return nil
}

func (t *topology) declareGroupQueue(ch *amqp.Channel, topic, group string) error {
	if t.b.opts.Partitions > 0 {
		return t.declarePartitions(ch, topic, group)
	}
	q := queueName(topic, group)
	if _, err := ch.QueueDeclare(q, true, false, false, false, t.queueArgs()); err != nil {
		return declareErr(fmt.Sprintf("queue %q (durable %s, queue_type=%s)", q, t.b.opts.QueueType, t.b.opts.QueueType), err)
	}
	if err := ch.QueueBind(q, "", topic, false, nil); err != nil {
		return declareErr(fmt.Sprintf("binding of queue %q to exchange %q", q, topic), err)
	}
	return nil
}

// declarePartitions declares a partitioned group: a durable consistent-hash
// exchange bound to the topic's exchange, routing on the routing key (the
// message Key) over the group's partition queues, each bound with weight 1
// and consumed by one member at a time (x-single-active-consumer).
func (t *topology) declarePartitions(ch *amqp.Channel, topic, group string) error {
	x := hashExchangeName(topic, group)
	if err := ch.ExchangeDeclare(x, "x-consistent-hash", true, false, false, false, nil); err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.CommandInvalid {
			return fmt.Errorf("rabbitmq: declare exchange %q for partitions=%d: the broker has no x-consistent-hash exchange type (enable the rabbitmq_consistent_hash_exchange plugin): %v: %w",
				x, t.b.opts.Partitions, err, driver.ErrUnsupported)
		}
		return declareErr(fmt.Sprintf("exchange %q (durable x-consistent-hash)", x), err)
	}
	if err := ch.ExchangeBind(x, "", topic, false, nil); err != nil {
		return declareErr(fmt.Sprintf("binding of exchange %q to exchange %q", x, topic), err)
	}
	args := t.queueArgs()
	args["x-single-active-consumer"] = true
	for _, q := range t.groupQueues(topic, group) {
		if _, err := ch.QueueDeclare(q, true, false, false, false, args); err != nil {
			return declareErr(fmt.Sprintf("partition queue %q (durable %s, single active consumer)", q, t.b.opts.QueueType), err)
		}
		if err := ch.QueueBind(q, "1", x, false, nil); err != nil {
			return declareErr(fmt.Sprintf("binding of queue %q to exchange %q", q, x), err)
		}
	}
	return nil
}

// anonQueueTTL is how long the broker keeps an anonymous subscription's
// queue after its last consumer went away (it survives reconnects).
const anonQueueTTL = 10 * time.Minute

// declareSubscription declares what a subscription consumes from, on ch
// (a channel of the consume connection).
func (t *topology) declareSubscription(ch *amqp.Channel, topic, group, queue string, anon bool) error {
	if err := declareExchange(ch, topic); err != nil {
		return err
	}
	if anon {
		args := amqp.Table{"x-queue-type": QueueClassic, "x-expires": int64(anonQueueTTL / time.Millisecond)}
		if _, err := ch.QueueDeclare(queue, false, false, false, false, args); err != nil {
			return declareErr(fmt.Sprintf("anonymous queue %q", queue), err)
		}
		if err := ch.QueueBind(queue, "", topic, false, nil); err != nil {
			return declareErr(fmt.Sprintf("binding of queue %q to exchange %q", queue, topic), err)
		}
		return nil
	}
	return t.declareGroupQueue(ch, topic, group)
}

// delayQueueRedeclare is how often a delay queue in use is declared again
// to renew its x-expires lease (publishing alone does not renew it).
const delayQueueRedeclare = 10 * time.Minute

// ensureDelayQueue declares the delay queue that holds messages of queue
// for ms milliseconds, then dead-letters them back to queue.
func (t *topology) ensureDelayQueue(ctx context.Context, queue string, ms int64) (string, error) {
	name := delayQueueName(queue, ms)
	_, gen, err := t.b.pub.get(ctx)
	if err != nil {
		return "", err
	}
	key := "d:" + name
	if t.fresh(key, gen, delayQueueRedeclare) {
		return name, nil
	}
	g, err := t.b.pub.withAdmin(ctx, func(ch *amqp.Channel) error {
		args := amqp.Table{
			"x-queue-type":              QueueClassic,
			"x-message-ttl":             ms,
			"x-dead-letter-exchange":    "",
			"x-dead-letter-routing-key": queue,
			// Deleted an hour after its last declaration plus the delay:
			// declarations are renewed every delayQueueRedeclare while the
			// queue is in use, so a message always expires first.
			"x-expires": ms + int64(time.Hour/time.Millisecond),
		}
		if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
			return declareErr(fmt.Sprintf("delay queue %q", name), err)
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	t.mark(key, g)
	return name, nil
}

// declareErr explains a failed declaration; a PRECONDITION_FAILED (the
// entity exists with other settings) or ACCESS_REFUSED is ErrInvalid.
func declareErr(what string, err error) error {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case amqp.PreconditionFailed:
			return fmt.Errorf("rabbitmq: declare %s: it exists with other settings (%s); delete it or match queue_type: %w", what, ae.Reason, driver.ErrInvalid)
		case amqp.AccessRefused:
			return fmt.Errorf("rabbitmq: declare %s: access refused (%s): %w", what, ae.Reason, driver.ErrInvalid)
		}
	}
	return fmt.Errorf("rabbitmq: declare %s: %w", what, err)
}
