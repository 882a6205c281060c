package kafka_test

// Benchmarks on the real broker, comparing in one run the raw kafka-go
// Writer/Reader, omnibus, and watermill-kafka v3 (sarama) with the same
// message count and size. b.N is the number of messages; each benchmark
// reports msg/s. Run (see docs/benchmarks.md):
//
//	eval "$(scripts/brokers up kafka)"
//	go test -run XXX -bench . -benchtime 100000x ./adapters/kafka/

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	kafkago "github.com/segmentio/kafka-go"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

const (
	benchPayload = 256 // bytes per message
	benchBatch   = 100 // messages per call in the batch benchmarks
)

// benchPublishers is the number of concurrent publishers, one message per
// call: 32, or OMNIBUS_BENCH_PUBLISHERS.
var benchPublishers = func() int {
	if n, err := strconv.Atoi(os.Getenv("OMNIBUS_BENCH_PUBLISHERS")); err == nil && n > 0 {
		return n
	}
	return 32
}()

var payload = []byte(strings.Repeat("x", benchPayload))

// spread runs fn(i) for i in [0, n) on workers goroutines.
func spread(n, workers int, fn func(i int) error) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

func report(b *testing.B, n int, d time.Duration) {
	b.ReportMetric(float64(n)/d.Seconds(), "msg/s")
}

func benchTopic(b *testing.B, c *pubsub.Client) string {
	return newTopic(b, c, uniqueName(b, "bench"))
}

func rawWriter(b *testing.B, topic string) *kafkago.Writer {
	// Tuned, not default: BatchTimeout 1s would make every partial batch
	// wait a second. A batch closes at BatchSize messages or after 2ms.
	w := &kafkago.Writer{
		Addr: kafkago.TCP(strings.Split(integration.Kafka(b), ",")...), Topic: topic,
		Balancer: &kafkago.Murmur2Balancer{}, RequiredAcks: kafkago.RequireAll,
		BatchSize: 1000, BatchTimeout: 2 * time.Millisecond, BatchBytes: 8 << 20,
		// A transport of its own: kafka-go's shared default one caches
		// metadata from before the topic was created.
		Transport: &kafkago.Transport{},
	}
	b.Cleanup(func() { _ = w.Close() })
	return w
}

// benchKeys are the 64 message keys, made once: formatting a key per
// message would spend the shared cores on the harness.
var benchKeys = func() (k [64]string) {
	for i := range k {
		k[i] = fmt.Sprintf("k%d", i)
	}
	return k
}()

// benchKey is the key of message i in every benchmark (64 keys).
func benchKey(i int) string { return benchKeys[i%64] }

// messages returns omnibus messages from, from+1, ... of a run: n of them,
// but none past total.
func messages(from, n, total int) []*pubsub.Message {
	msgs := make([]*pubsub.Message, min(n, total-from))
	for j := range msgs {
		msgs[j] = &pubsub.Message{Key: benchKey(from + j), Payload: payload}
	}
	return msgs
}

// watermillPublisher is watermill-kafka's sync publisher with its default
// sarama config (DefaultSaramaSyncPublisherConfig: MaxOpenRequests 5, not
// idempotent) except for the two settings that would make the comparison
// unfair: RequiredAcks is WaitForAll, as for raw and omnibus (sarama's
// default is WaitForLocal, acks=1), and every message carries the same key
// as in the other two (metadata "key", used as the partition key).
func watermillPublisher(b *testing.B) message.Publisher {
	cfg := wmkafka.DefaultSaramaSyncPublisherConfig()
	cfg.Producer.RequiredAcks = sarama.WaitForAll
	p, err := wmkafka.NewPublisher(wmkafka.PublisherConfig{
		Brokers: strings.Split(integration.Kafka(b), ","),
		Marshaler: wmkafka.NewWithPartitioningMarshaler(func(_ string, m *message.Message) (string, error) {
			return m.Metadata.Get("key"), nil
		}),
		OverwriteSaramaConfig: cfg,
	}, watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = p.Close() })
	return p
}

// publishInCalls times one goroutine publishing b.N messages to a new
// topic, per messages per Publish call.
func publishInCalls(b *testing.B, c *pubsub.Client, per int) {
	topic := benchTopic(b, c)
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i += per {
		if err := c.Publish(ctx, topic, messages(i, per, b.N)...); err != nil {
			b.Fatal(err)
		}
	}
	report(b, b.N, time.Since(start))
}

// BenchmarkPublishConcurrent: benchPublishers goroutines each publish one
// message per call and wait for the broker's ack (acks=all).
func BenchmarkPublishConcurrent(b *testing.B) {
	c := openClient(b, os.Getenv("OMNIBUS_BENCH_KAFKA_PARAMS"))
	b.Run("raw-kafka-go", func(b *testing.B) {
		w := rawWriter(b, benchTopic(b, c))
		ctx := context.Background()
		b.ResetTimer()
		start := time.Now()
		err := spread(b.N, benchPublishers, func(i int) error {
			return w.WriteMessages(ctx, kafkago.Message{Key: []byte(benchKey(i)), Value: payload})
		})
		report(b, b.N, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
	})
	b.Run("omnibus", func(b *testing.B) {
		topic := benchTopic(b, c)
		ctx := context.Background()
		b.ResetTimer()
		start := time.Now()
		err := spread(b.N, benchPublishers, func(i int) error {
			return c.Publish(ctx, topic, &pubsub.Message{Key: benchKey(i), Payload: payload})
		})
		report(b, b.N, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
	})
	// The bound for the callers above: one goroutine publishing
	// benchPublishers messages per call (32 by default), i.e. the fullest produce request
	// the concurrent callers can make, sent back to back with no callers to
	// wake or gather. Group commit can at best match it.
	b.Run("bound-one-caller-all-per-call", func(b *testing.B) { publishInCalls(b, c, benchPublishers) })
	b.Run("watermill-kafka", func(b *testing.B) {
		p := watermillPublisher(b)
		topic := benchTopic(b, c)
		b.ResetTimer()
		start := time.Now()
		err := spread(b.N, benchPublishers, func(i int) error {
			m := message.NewMessage(watermill.NewUUID(), payload)
			m.Metadata.Set("key", benchKey(i))
			return p.Publish(topic, m)
		})
		report(b, b.N, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkPublishBatch: one goroutine publishes benchBatch messages per
// call and waits for the broker's ack.
func BenchmarkPublishBatch(b *testing.B) {
	c := openClient(b, "")
	b.Run("raw-kafka-go", func(b *testing.B) {
		w := rawWriter(b, benchTopic(b, c))
		ctx := context.Background()
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < b.N; i += benchBatch {
			n := min(benchBatch, b.N-i)
			msgs := make([]kafkago.Message, n)
			for j := range msgs {
				msgs[j] = kafkago.Message{Key: []byte(benchKey(i + j)), Value: payload}
			}
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				b.Fatal(err)
			}
		}
		report(b, b.N, time.Since(start))
	})
	b.Run("omnibus", func(b *testing.B) { publishInCalls(b, c, benchBatch) })
	b.Run("watermill-kafka", func(b *testing.B) {
		p := watermillPublisher(b)
		topic := benchTopic(b, c)
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < b.N; i += benchBatch {
			n := min(benchBatch, b.N-i)
			msgs := make([]*message.Message, n)
			for j := range msgs {
				msgs[j] = message.NewMessage(watermill.NewUUID(), payload)
				msgs[j].Metadata.Set("key", benchKey(i+j))
			}
			if err := p.Publish(topic, msgs...); err != nil {
				b.Fatal(err)
			}
		}
		report(b, b.N, time.Since(start))
	})
}

// fill publishes n messages of benchPayload bytes to a new topic.
func fill(b *testing.B, c *pubsub.Client, n int) string {
	b.Helper()
	topic := benchTopic(b, c)
	for i := 0; i < n; i += 1000 {
		if err := c.Publish(context.Background(), topic, messages(i, 1000, n)...); err != nil {
			b.Fatal(err)
		}
	}
	return topic
}

// timedFromSecond calls receiveAndAck b.N times and reports the rate of
// the b.N-1 calls after the first: the clock starts once the first message
// was received and acked (see BenchmarkConsumeAck).
func timedFromSecond(b *testing.B, receiveAndAck func() error) {
	var start time.Time
	for i := 0; i < b.N; i++ {
		if err := receiveAndAck(); err != nil {
			b.Fatal(err)
		}
		if i == 0 {
			b.ResetTimer()
			start = time.Now()
		}
	}
	report(b, b.N-1, time.Since(start))
}

// BenchmarkConsumeAck: a new consumer group reads b.N messages (already on
// a 4-partition topic) from the oldest and acks (commits) each. The clock
// starts once the first message was received and acked, so that joining the
// group (synchronous in omnibus's Subscribe, in the background for the raw
// Reader and for watermill) counts for nobody, and the rate is of the b.N-1
// messages after it.
func BenchmarkConsumeAck(b *testing.B) {
	c := openClient(b, "")
	b.Run("raw-kafka-go", func(b *testing.B) {
		topic := fill(b, c, b.N)
		r := kafkago.NewReader(kafkago.ReaderConfig{
			Brokers: strings.Split(integration.Kafka(b), ","), Topic: topic, GroupID: uniqueName(b, "g"),
			StartOffset: kafkago.FirstOffset, CommitInterval: 200 * time.Millisecond,
			MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 250 * time.Millisecond, QueueCapacity: 1000,
			HeartbeatInterval: 500 * time.Millisecond, SessionTimeout: 10 * time.Second,
		})
		defer r.Close()
		ctx := context.Background()
		timedFromSecond(b, func() error {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				return err
			}
			return r.CommitMessages(ctx, m)
		})
	})
	b.Run("omnibus", func(b *testing.B) {
		topic := fill(b, c, b.N)
		sub, err := c.Subscribe(context.Background(), topic, pubsub.Group(uniqueName(b, "g")), pubsub.FromOldest(), pubsub.Prefetch(1000))
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Close()
		ctx := context.Background()
		timedFromSecond(b, func() error {
			d, err := sub.Receive(ctx)
			if err != nil {
				return err
			}
			return d.Ack()
		})
	})
	b.Run("watermill-kafka", func(b *testing.B) {
		topic := fill(b, c, b.N)
		cfg := wmkafka.DefaultSaramaSubscriberConfig()
		cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
		s, err := wmkafka.NewSubscriber(wmkafka.SubscriberConfig{
			Brokers: strings.Split(integration.Kafka(b), ","), Unmarshaler: wmkafka.DefaultMarshaler{},
			OverwriteSaramaConfig: cfg, ConsumerGroup: uniqueName(b, "g"),
		}, watermill.NopLogger{})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		ch, err := s.Subscribe(ctx, topic)
		if err != nil {
			b.Fatal(err)
		}
		timedFromSecond(b, func() error {
			(<-ch).Ack()
			return nil
		})
	})
}
