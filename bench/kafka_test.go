package bench_test

// Kafka benchmarks on the real broker, comparing in one run raw franz-go
// (kgo ProduceSync / PollFetches + commit), raw franz-go writing omnibus's
// records (+id: the same records with a message ID header), raw kafka-go
// (Writer/Reader), omnibus (on franz-go) and watermill-kafka v3 (sarama),
// with 256-byte messages, the same 64 keys and acks=all everywhere. Every
// row producing gets a client of its own. b.N is the number of
// messages; each benchmark reports msg/s and the client's CPU time per
// message (user+system of this process, from getrusage; the broker runs in
// another process). Run (see docs/benchmarks.md):
//
//	eval "$(scripts/brokers up kafka)"
//	cd bench && go test -run '^$' -bench Kafka -benchtime 100000x .

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	wmkafka "github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/omnibusmq/omnibus/adapters/kafka"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

const (
	kafkaPayloadSize = 256 // bytes per message
	kafkaBatch       = 100 // messages per call in the batch benchmarks
	kafkaPartitions  = 4
)

// kafkaPublishers is the number of concurrent publishers, one message per
// call: 32, or OMNIBUS_BENCH_PUBLISHERS.
var kafkaPublishers = func() int {
	if n, err := strconv.Atoi(os.Getenv("OMNIBUS_BENCH_PUBLISHERS")); err == nil && n > 0 {
		return n
	}
	return 32
}()

// benchRounds is how many times each benchmark runs all its rows, one
// row after the other (OMNIBUS_BENCH_ROUNDS, default 1). The broker's rate
// drifts over minutes; rounds put every client through the same drift (odd
// rounds run the rows in reverse order, see inTurn),
// where -count runs each row's samples back to back.
var benchRounds = func() int {
	if n, err := strconv.Atoi(os.Getenv("OMNIBUS_BENCH_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 1
}()

// inTurn collects the rows of one round and runs them: in the order given
// in even rounds, reversed in odd ones, so that a broker whose rate drifts
// within a round favours no row.
type inTurn struct {
	names []string
	fns   []func(*testing.B)
}

func (r *inTurn) Run(name string, fn func(*testing.B)) {
	r.names, r.fns = append(r.names, name), append(r.fns, fn)
}

func (r *inTurn) run(b *testing.B, round int) {
	for i := range r.names {
		if round%2 == 1 {
			i = len(r.names) - 1 - i
		}
		b.Run(r.names[i], r.fns[i])
	}
}

var kafkaPayload = []byte(strings.Repeat("x", kafkaPayloadSize))

// kafkaKeys are the 64 message keys, made once.
var kafkaKeys = func() (k [64]string) {
	for i := range k {
		k[i] = fmt.Sprintf("k%d", i)
	}
	return k
}()

func kafkaKey(i int) string { return kafkaKeys[i%64] }

var kafkaSeq atomic.Int64

// kafkaClient opens an omnibus client on the test broker.
func kafkaClient(b *testing.B) *pubsub.Client {
	b.Helper()
	c, err := pubsub.Open(context.Background(), "kafka://"+integration.Kafka(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	return c
}

// kafkaTopic creates a fresh topic with kafkaPartitions partitions and
// deletes it after the benchmark.
func kafkaTopic(b *testing.B, c *pubsub.Client) string {
	b.Helper()
	kb := c.Driver().(*kafka.Broker)
	name := fmt.Sprintf("omnibus-bench-%d-%d", time.Now().UnixNano()%1e9, kafkaSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := kb.CreateTopic(ctx, name, kafkaPartitions, 1); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = kb.DeleteTopic(ctx, name, nil)
	})
	return name
}

// cpuTime is this process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// measure times run (which handles n messages) and reports msg/s and the
// client's CPU µs per message.
func measureKafka(b *testing.B, n int, run func() error) {
	b.Helper()
	b.ResetTimer()
	cpu0, start := cpuTime(), time.Now()
	err := run()
	d, cpu := time.Since(start), cpuTime()-cpu0
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(n)/d.Seconds(), "msg/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/msg")
}

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

// rawFranz is a franz-go client with its defaults (idempotent, acks=all,
// murmur2 key partitioning) producing to topic, or consuming it as group.
func rawFranz(b *testing.B, opts ...kgo.Opt) *kgo.Client {
	b.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(strings.Split(integration.Kafka(b), ",")...)}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cl.Close)
	return cl
}

func rawKafkaGoWriter(b *testing.B, topic string) *kafkago.Writer {
	// Tuned, not default: BatchTimeout 1s would make every partial batch
	// wait a second. A batch closes at BatchSize messages or after 2ms.
	w := &kafkago.Writer{
		Addr: kafkago.TCP(strings.Split(integration.Kafka(b), ",")...), Topic: topic,
		Balancer: &kafkago.Murmur2Balancer{}, RequiredAcks: kafkago.RequireAll,
		BatchSize: 1000, BatchTimeout: 2 * time.Millisecond, BatchBytes: 8 << 20,
		Transport: &kafkago.Transport{},
	}
	b.Cleanup(func() { _ = w.Close() })
	return w
}

// watermillPublisher is watermill-kafka's sync publisher with its default
// sarama config except RequiredAcks WaitForAll (as everywhere here) and the
// same partition key as the others (metadata "key").
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

// franzRecord is message i as a raw record: its key and the payload.
func franzRecord(topic string, i int) *kgo.Record {
	return &kgo.Record{Topic: topic, Key: []byte(kafkaKey(i)), Value: kafkaPayload}
}

// franzRecordWithID is message i as omnibus writes it: the same key and
// payload plus a new message ID in the omnibus-id header, so that raw
// franz-go does the same work (the +id rows).
func franzRecordWithID(topic string, i int) *kgo.Record {
	r := franzRecord(topic, i)
	r.Headers = []kgo.RecordHeader{{Key: kafka.HeaderID, Value: []byte(pubsub.NewID())}}
	return r
}

// franzBatch is messages from..from+k-1 as records made by rec.
func franzBatch(topic string, from, k int, rec func(string, int) *kgo.Record) []*kgo.Record {
	recs := make([]*kgo.Record, k)
	for j := range recs {
		recs[j] = rec(topic, from+j)
	}
	return recs
}

func omnibusMessages(from, n, total int) []*pubsub.Message {
	msgs := make([]*pubsub.Message, min(n, total-from))
	for j := range msgs {
		msgs[j] = &pubsub.Message{Key: kafkaKey(from + j), Payload: kafkaPayload}
	}
	return msgs
}

// BenchmarkKafkaPublishConcurrent: kafkaPublishers goroutines each publish
// one message per call and wait for the broker's ack (acks=all).
func BenchmarkKafkaPublishConcurrent(b *testing.B) {
	c := kafkaClient(b)
	ctx := context.Background()
	for round := range benchRounds {
		rows := &inTurn{}
		rows.Run("raw-franz-go", func(b *testing.B) {
			topic := kafkaTopic(b, c)
			cl := rawFranz(b)
			measureKafka(b, b.N, func() error {
				return spread(b.N, kafkaPublishers, func(i int) error {
					return cl.ProduceSync(ctx, franzRecord(topic, i)).FirstErr()
				})
			})
		})
		rows.Run("raw-franz-go+id", func(b *testing.B) {
			topic := kafkaTopic(b, c)
			cl := rawFranz(b)
			measureKafka(b, b.N, func() error {
				return spread(b.N, kafkaPublishers, func(i int) error {
					return cl.ProduceSync(ctx, franzRecordWithID(topic, i)).FirstErr()
				})
			})
		})
		// The bound of this row for any client that sends one produce
		// request per round trip: one goroutine producing the 32 callers'
		// messages as one ProduceSync call each round.
		rows.Run("bound-franz-go-1-call-of-32", func(b *testing.B) {
			topic := kafkaTopic(b, c)
			cl := rawFranz(b)
			measureKafka(b, b.N, func() error {
				for i := 0; i < b.N; i += kafkaPublishers {
					if err := cl.ProduceSync(ctx, franzBatch(topic, i, min(kafkaPublishers, b.N-i), franzRecord)...).FirstErr(); err != nil {
						return err
					}
				}
				return nil
			})
		})
		rows.Run("raw-kafka-go", func(b *testing.B) {
			w := rawKafkaGoWriter(b, kafkaTopic(b, c))
			measureKafka(b, b.N, func() error {
				return spread(b.N, kafkaPublishers, func(i int) error {
					return w.WriteMessages(ctx, kafkago.Message{Key: []byte(kafkaKey(i)), Value: kafkaPayload})
				})
			})
		})
		rows.Run("omnibus", func(b *testing.B) {
			topic := kafkaTopic(b, c)
			oc := kafkaClient(b) // fresh, as raw franz-go's client is
			measureKafka(b, b.N, func() error {
				return spread(b.N, kafkaPublishers, func(i int) error {
					return oc.Publish(ctx, topic, &pubsub.Message{Key: kafkaKey(i), Payload: kafkaPayload})
				})
			})
		})
		rows.Run("watermill-kafka", func(b *testing.B) {
			p := watermillPublisher(b)
			topic := kafkaTopic(b, c)
			measureKafka(b, b.N, func() error {
				return spread(b.N, kafkaPublishers, func(i int) error {
					m := message.NewMessage(watermill.NewUUID(), kafkaPayload)
					m.Metadata.Set("key", kafkaKey(i))
					return p.Publish(topic, m)
				})
			})
		})
		rows.run(b, round)
	}
}

// BenchmarkKafkaPublishBatch: one goroutine publishes kafkaBatch messages
// per call and waits for the broker's ack.
func BenchmarkKafkaPublishBatch(b *testing.B) {
	c := kafkaClient(b)
	ctx := context.Background()
	for round := range benchRounds {
		rows := &inTurn{}
		rows.Run("raw-franz-go", func(b *testing.B) {
			topic := kafkaTopic(b, c)
			cl := rawFranz(b)
			inBatches(b, func(i, k int) error {
				return cl.ProduceSync(ctx, franzBatch(topic, i, k, franzRecord)...).FirstErr()
			})
		})
		rows.Run("raw-franz-go+id", func(b *testing.B) {
			topic := kafkaTopic(b, c)
			cl := rawFranz(b)
			inBatches(b, func(i, k int) error {
				return cl.ProduceSync(ctx, franzBatch(topic, i, k, franzRecordWithID)...).FirstErr()
			})
		})
		rows.Run("raw-kafka-go", func(b *testing.B) {
			w := rawKafkaGoWriter(b, kafkaTopic(b, c))
			inBatches(b, func(i, k int) error {
				msgs := make([]kafkago.Message, k)
				for j := range msgs {
					msgs[j] = kafkago.Message{Key: []byte(kafkaKey(i + j)), Value: kafkaPayload}
				}
				return w.WriteMessages(ctx, msgs...)
			})
		})
		rows.Run("omnibus", func(b *testing.B) {
			topic := kafkaTopic(b, c)
			oc := kafkaClient(b) // fresh, as raw franz-go's client is
			inBatches(b, func(i, k int) error {
				return oc.Publish(ctx, topic, omnibusMessages(i, k, b.N)...)
			})
		})
		rows.Run("watermill-kafka", func(b *testing.B) {
			p := watermillPublisher(b)
			topic := kafkaTopic(b, c)
			inBatches(b, func(i, k int) error {
				msgs := make([]*message.Message, k)
				for j := range msgs {
					msgs[j] = message.NewMessage(watermill.NewUUID(), kafkaPayload)
					msgs[j].Metadata.Set("key", kafkaKey(i+j))
				}
				return p.Publish(topic, msgs...)
			})
		})
		rows.run(b, round)
	}
}

// inBatches times send(i, k) for the b.N messages in calls of k =
// kafkaBatch (the last call may be shorter), i the first message's index.
func inBatches(b *testing.B, send func(i, k int) error) {
	b.Helper()
	measureKafka(b, b.N, func() error {
		for i := 0; i < b.N; i += kafkaBatch {
			if err := send(i, min(kafkaBatch, b.N-i)); err != nil {
				return err
			}
		}
		return nil
	})
}

// fillKafka publishes n messages of kafkaPayloadSize bytes to a new topic.
func fillKafka(b *testing.B, c *pubsub.Client, n int) string {
	b.Helper()
	topic := kafkaTopic(b, c)
	for i := 0; i < n; i += 1000 {
		if err := c.Publish(context.Background(), topic, omnibusMessages(i, 1000, n)...); err != nil {
			b.Fatal(err)
		}
	}
	return topic
}

// consumeTimed calls receiveAndAck b.N times; the clock starts once the
// first message was received and acked (joining the group counts for
// nobody), and the rate is of the b.N-1 messages after it.
func consumeTimed(b *testing.B, receiveAndAck func() error) {
	b.Helper()
	if err := receiveAndAck(); err != nil {
		b.Fatal(err)
	}
	measureKafka(b, b.N-1, func() error {
		for i := 1; i < b.N; i++ {
			if err := receiveAndAck(); err != nil {
				return err
			}
		}
		return nil
	})
}

// BenchmarkKafkaConsumeAck: a new consumer group reads b.N messages
// (already on a 4-partition topic) from the oldest and acks (commits)
// each.
func BenchmarkKafkaConsumeAck(b *testing.B) {
	c := kafkaClient(b)
	ctx := context.Background()
	for round := range benchRounds {
		rows := &inTurn{}
		rows.Run("raw-franz-go", func(b *testing.B) {
			topic := fillKafka(b, c, b.N)
			cl := rawFranz(b, kgo.ConsumerGroup(fmt.Sprintf("bench-g-%d", kafkaSeq.Add(1))), kgo.ConsumeTopics(topic),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.AutoCommitMarks(), kgo.AutoCommitInterval(200*time.Millisecond))
			var buf []*kgo.Record
			consumeTimed(b, func() error {
				for len(buf) == 0 {
					fs := cl.PollRecords(ctx, 1000)
					if err := fs.Err0(); err != nil {
						return err
					}
					buf = fs.Records()
				}
				cl.MarkCommitRecords(buf[0])
				buf = buf[1:]
				return nil
			})
		})
		rows.Run("raw-kafka-go", func(b *testing.B) {
			topic := fillKafka(b, c, b.N)
			r := kafkago.NewReader(kafkago.ReaderConfig{
				Brokers: strings.Split(integration.Kafka(b), ","), Topic: topic, GroupID: fmt.Sprintf("bench-g-%d", kafkaSeq.Add(1)),
				StartOffset: kafkago.FirstOffset, CommitInterval: 200 * time.Millisecond,
				MinBytes: 1, MaxBytes: 16 << 20, MaxWait: 250 * time.Millisecond, QueueCapacity: 1000,
				HeartbeatInterval: 500 * time.Millisecond, SessionTimeout: 10 * time.Second,
			})
			b.Cleanup(func() { _ = r.Close() })
			consumeTimed(b, func() error {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					return err
				}
				return r.CommitMessages(ctx, m)
			})
		})
		rows.Run("omnibus", func(b *testing.B) {
			topic := fillKafka(b, c, b.N)
			sub, err := c.Subscribe(ctx, topic, pubsub.Group(fmt.Sprintf("bench-g-%d", kafkaSeq.Add(1))), pubsub.FromOldest(), pubsub.Prefetch(1000))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = sub.Close() })
			consumeTimed(b, func() error {
				d, err := sub.Receive(ctx)
				if err != nil {
					return err
				}
				return d.Ack()
			})
		})
		rows.Run("watermill-kafka", func(b *testing.B) {
			topic := fillKafka(b, c, b.N)
			cfg := wmkafka.DefaultSaramaSubscriberConfig()
			cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
			s, err := wmkafka.NewSubscriber(wmkafka.SubscriberConfig{
				Brokers: strings.Split(integration.Kafka(b), ","), Unmarshaler: wmkafka.DefaultMarshaler{},
				OverwriteSaramaConfig: cfg, ConsumerGroup: fmt.Sprintf("bench-g-%d", kafkaSeq.Add(1)),
			}, watermill.NopLogger{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = s.Close() })
			sctx, cancel := context.WithCancel(ctx)
			b.Cleanup(cancel)
			ch, err := s.Subscribe(sctx, topic)
			if err != nil {
				b.Fatal(err)
			}
			consumeTimed(b, func() error {
				(<-ch).Ack()
				return nil
			})
		})
		rows.run(b, round)
	}
}
