package bench_test

// Benchmarks against a real RabbitMQ, comparing in one run the raw
// amqp091-go client, omnibus and watermill-amqp v3 on the same messages
// (100-byte persistent payload, a message ID and one header) and the same
// topology (a durable fanout exchange and one durable queue of the given
// type). Run:
//
//	eval "$(scripts/brokers up rabbitmq)"
//	cd bench && go test -run XXX -bench RabbitMQ .
//
// Publish: 4 goroutines share b.N messages, each with at most 512 messages
// in flight: "raw" streams on its own confirm channel per goroutine with a
// sliding window of 512 unconfirmed messages (the pipelined-confirm
// pattern); "raw-sync" makes, on its own confirm channel per goroutine, the
// same calls as omnibus: 512 messages, then wait until all are confirmed
// (the guarantee omnibus's Publish gives); omnibus and watermill publish
// calls of 512 messages that return when all are confirmed (watermill with
// ConfirmDelivery and a channel pool of 4). Raw publishes mandatory, as
// omnibus does by default (unroutable=error), so the broker does the same
// work. Consume: the queue is filled
// first (untimed), then b.N messages are received and acked one by one,
// with a prefetch of 256 for every library; raw acks each delivery
// ("raw-ack-each") or every 64th with multiple=true ("raw-ack-multiple");
// omnibus acks each delivery through Delivery.Ack and its adapter coalesces
// (by default a basic.ack multiple=true per prefetch/4 = 64 contiguous
// acks, or within 1ms); watermill acks each delivery. Besides msg/s, each
// run reports cpu-µs/msg: the client process's user+system CPU per message,
// and broker-cpu-µs/msg: the broker's, when it is the local broker of
// scripts/brokers. Each parent benchmark prints the ratios of
// its last run; take medians over -count runs.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	"github.com/ThreeDotsLabs/watermill/message"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/omnibusmq/omnibus/adapters/rabbitmq"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

const (
	benchPublishers = 4
	benchBatch      = 512
	benchWindow     = 512
	benchPrefetch   = 256
	benchGroup      = "bench"
)

var rabbitPayload = []byte("0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789")

// rates records the last msg/s of each sub-benchmark, for the ratio lines.
type rates struct {
	mu sync.Mutex
	m  map[string]float64
}

func (r *rates) set(k string, v float64) {
	r.mu.Lock()
	r.m[k] = v
	r.mu.Unlock()
}

func (r *rates) logRatios(b *testing.B, what string, names ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	om := r.m["omnibus"]
	for _, n := range names {
		if v := r.m[n]; v > 0 && om > 0 {
			fmt.Printf("ratio ")
			fmt.Printf("%s: omnibus %.0f msg/s = %.2fx %s (%.0f msg/s)\n", what, om, om/v, n, v)
		}
	}
}

func benchTopic(qt, lib string) string {
	return fmt.Sprintf("omnibus-bench-%s-%s-%d", qt, lib, time.Now().UnixNano())
}

// declare makes the exchange and the group queue the way the adapter does.
func declare(b *testing.B, conn *amqp.Connection, topic, qt string) string {
	b.Helper()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	defer ch.Close()
	q := rabbitmq.QueueName(topic, benchGroup)
	if err := ch.ExchangeDeclare(topic, amqp.ExchangeFanout, true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-queue-type": qt}); err != nil {
		b.Fatal(err)
	}
	if err := ch.QueueBind(q, "", topic, false, nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if ch, err := conn.Channel(); err == nil {
			_, _ = ch.QueueDelete(q, false, false, false)
			_ = ch.ExchangeDelete(topic, false, false)
			_ = ch.Close()
		}
	})
	return q
}

func rawPublishing(i int) amqp.Publishing {
	return amqp.Publishing{
		DeliveryMode: amqp.Persistent,
		MessageId:    "bench-" + strconv.Itoa(i),
		Headers:      amqp.Table{"x-bench": "1"},
		Timestamp:    time.Now(),
		Body:         rabbitPayload,
	}
}

// rawPublishSync publishes n messages on one confirm channel in calls of
// benchBatch, each waiting until all its messages are confirmed.
func rawPublishSync(ctx context.Context, conn *amqp.Connection, topic string, from, n int) error {
	ch, err := confirmChannel(conn)
	if err != nil {
		return err
	}
	defer ch.Close()
	dcs := make([]*amqp.DeferredConfirmation, 0, benchBatch)
	for i := 0; i < n; i += benchBatch {
		dcs = dcs[:0]
		for j := i; j < min(i+benchBatch, n); j++ {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, topic, "", true, false, rawPublishing(from+j))
			if err != nil {
				return err
			}
			dcs = append(dcs, dc)
		}
		if err := confirmed(dcs...); err != nil {
			return err
		}
	}
	return nil
}

// confirmChannel opens a channel of conn in confirm mode.
func confirmChannel(conn *amqp.Connection) (*amqp.Channel, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, err
	}
	return ch, nil
}

// confirmed waits for every confirmation in dcs; a nack is an error.
func confirmed(dcs ...*amqp.DeferredConfirmation) error {
	for _, dc := range dcs {
		if !dc.Wait() {
			return fmt.Errorf("nacked")
		}
	}
	return nil
}

// rawPublish streams n messages on one confirm channel with a sliding window.
func rawPublish(ctx context.Context, conn *amqp.Connection, topic string, from, n int) error {
	ch, err := confirmChannel(conn)
	if err != nil {
		return err
	}
	defer ch.Close()
	window := make([]*amqp.DeferredConfirmation, 0, n)
	oldest := 0
	for i := 0; i < n; i++ {
		if i-oldest >= benchWindow {
			if err := confirmed(window[oldest]); err != nil {
				return err
			}
			oldest++
		}
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, topic, "", true, false, rawPublishing(from+i))
		if err != nil {
			return err
		}
		window = append(window, dc)
	}
	return confirmed(window[oldest:]...)
}

// split runs fn for benchPublishers shares of n.
func split(n int, fn func(from, count int) error) error {
	var wg sync.WaitGroup
	errs := make(chan error, benchPublishers)
	per := (n + benchPublishers - 1) / benchPublishers
	for g := 0; g < benchPublishers; g++ {
		from := g * per
		count := min(per, n-from)
		if count <= 0 {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(from, count); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// forQueueTypes runs fn as a sub-benchmark per queue type, with the broker
// URL, a connection for the raw clients and the fixtures, and the rates of
// that queue type's runs.
func forQueueTypes(b *testing.B, fn func(b *testing.B, url, qt string, conn *amqp.Connection, r *rates)) {
	url := integration.AMQP(b)
	for _, qt := range []string{rabbitmq.QueueQuorum, rabbitmq.QueueClassic} {
		b.Run(qt, func(b *testing.B) {
			conn, err := amqp.Dial(url)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			fn(b, url, qt, conn, &rates{m: map[string]float64{}})
		})
	}
}

func BenchmarkRabbitMQPublish(b *testing.B) {
	forQueueTypes(b, func(b *testing.B, url, qt string, conn *amqp.Connection, r *rates) {
		ctx := context.Background()

		// rawWith benchmarks a hand-written amqp091-go publish loop.
		rawWith := func(name string, publish func(context.Context, *amqp.Connection, string, int, int) error) func(*testing.B) {
			return func(b *testing.B) {
				topic := benchTopic(qt, name)
				declare(b, conn, topic, qt)
				b.ResetTimer()
				start := begin()
				if err := split(b.N, func(from, n int) error { return publish(ctx, conn, topic, from, n) }); err != nil {
					b.Fatal(err)
				}
				r.set(name, report(b, start))
			}
		}
		runRaw, runRawSync := rawWith("raw", rawPublish), rawWith("raw-sync", rawPublishSync)

		runOmnibus := func(b *testing.B) {
			topic := benchTopic(qt, "omnibus")
			declare(b, conn, topic, qt)
			c, err := pubsub.Open(ctx, url+"?queue_type="+qt)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.ResetTimer()
			start := begin()
			err = split(b.N, func(from, n int) error {
				for i := 0; i < n; i += benchBatch {
					msgs := make([]*pubsub.Message, min(benchBatch, n-i))
					for j := range msgs {
						msgs[j] = &pubsub.Message{ID: "bench-" + strconv.Itoa(from+i+j), Payload: rabbitPayload, Metadata: map[string]string{"x-bench": "1"}}
					}
					if err := c.Publish(ctx, topic, msgs...); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			r.set("omnibus", report(b, start))
		}

		runWatermill := func(b *testing.B) {
			topic := benchTopic(qt, "watermill")
			declare(b, conn, topic, qt)
			cfg := watermillConfig(url, qt)
			cfg.Publish.ConfirmDelivery = true
			cfg.Publish.ChannelPoolSize = benchPublishers
			pub, err := wamqp.NewPublisher(cfg, watermill.NopLogger{})
			if err != nil {
				b.Fatal(err)
			}
			defer pub.Close()
			b.ResetTimer()
			start := begin()
			err = split(b.N, func(from, n int) error {
				for i := 0; i < n; i += benchBatch {
					msgs := make([]*message.Message, min(benchBatch, n-i))
					for j := range msgs {
						msgs[j] = message.NewMessage("bench-"+strconv.Itoa(from+i+j), rabbitPayload)
						msgs[j].Metadata.Set("x-bench", "1")
					}
					if err := pub.Publish(topic, msgs...); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
			r.set("watermill", report(b, start))
		}
		b.Run("raw", runRaw)
		b.Run("raw-sync", runRawSync)
		b.Run("omnibus", runOmnibus)
		b.Run("watermill", runWatermill)
		r.logRatios(b, "publish "+qt, "raw", "raw-sync", "watermill")
	})
}

func watermillConfig(url, qt string) wamqp.Config {
	cfg := wamqp.NewDurablePubSubConfig(url, func(topic string) string { return rabbitmq.QueueName(topic, benchGroup) })
	cfg.Queue.Arguments = amqp.Table{"x-queue-type": qt}
	cfg.Consume.Qos.PrefetchCount = benchPrefetch
	return cfg
}

// mark is when a timed section began: wall clock, this process's CPU and
// the broker's.
type mark struct {
	t      time.Time
	cpu    time.Duration
	broker time.Duration
}

func begin() mark { return mark{time.Now(), integration.ProcessCPU(), brokerCPU()} }

// report records msg/s, the client's CPU time per message (user+sys of the
// whole test process, so every goroutine of the library is counted) and,
// where it can be read, the broker's.
func report(b *testing.B, start mark) float64 {
	el := time.Since(start.t)
	rate := float64(b.N) / el.Seconds()
	b.ReportMetric(rate, "msg/s")
	if cpu := integration.ProcessCPU(); cpu > 0 {
		b.ReportMetric(float64((cpu-start.cpu).Microseconds())/float64(b.N), "cpu-µs/msg")
	}
	if cpu := brokerCPU(); cpu > 0 && start.broker > 0 {
		b.ReportMetric(float64((cpu-start.broker).Microseconds())/float64(b.N), "broker-cpu-µs/msg")
	}
	return rate
}

// brokerCPU returns the user+system CPU time the broker has used, when the
// broker is the local one started by scripts/brokers (its beam.pid lies next
// to the ctl wrapper) and /proc can be read; else 0. The resolution is a
// clock tick (10ms): meaningful over a run of a second or more.
func brokerCPU() time.Duration {
	ctl := os.Getenv("OMNIBUS_AMQP_CTL")
	if ctl == "" {
		return 0
	}
	pid, err := os.ReadFile(filepath.Join(filepath.Dir(ctl), "beam.pid"))
	if err != nil {
		return 0
	}
	stat, err := os.ReadFile("/proc/" + strings.TrimSpace(string(pid)) + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command name (which ends with the last ')'):
	// state is field 3 of the whole line, utime 14, stime 15.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	const tick = 10 * time.Millisecond // USER_HZ = 100 on Linux
	return time.Duration(ut+st) * tick
}

// fill publishes n messages to topic (untimed setup for the consume runs).
func fill(b *testing.B, conn *amqp.Connection, topic string, n int) {
	b.Helper()
	if err := split(n, func(from, count int) error { return rawPublish(context.Background(), conn, topic, from, count) }); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkRabbitMQConsume(b *testing.B) {
	forQueueTypes(b, func(b *testing.B, url, qt string, conn *amqp.Connection, r *rates) {
		ctx := context.Background()
		for _, every := range []int{1, 64} {
			name := "raw-ack-each"
			if every > 1 {
				name = "raw-ack-multiple"
			}
			b.Run(name, func(b *testing.B) {
				topic := benchTopic(qt, name)
				q := declare(b, conn, topic, qt)
				fill(b, conn, topic, b.N)
				ch, err := conn.Channel()
				if err != nil {
					b.Fatal(err)
				}
				defer ch.Close()
				if err := ch.Qos(benchPrefetch, 0, false); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				start := begin()
				dl, err := ch.Consume(q, "", false, false, false, false, nil)
				if err != nil {
					b.Fatal(err)
				}
				for i := 1; i <= b.N; i++ {
					d := <-dl
					if i%every == 0 || i == b.N {
						if err := d.Ack(every > 1); err != nil {
							b.Fatal(err)
						}
					}
				}
				r.set(name, report(b, start))
			})
		}

		b.Run("omnibus", func(b *testing.B) {
			topic := benchTopic(qt, "omnibus")
			declare(b, conn, topic, qt)
			fill(b, conn, topic, b.N)
			c, err := pubsub.Open(ctx, url+"?queue_type="+qt)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.ResetTimer()
			start := begin()
			s, err := c.Subscribe(ctx, topic, pubsub.Group(benchGroup), pubsub.Prefetch(benchPrefetch))
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; i < b.N; i++ {
				d, err := s.Receive(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if err := d.Ack(); err != nil {
					b.Fatal(err)
				}
			}
			r.set("omnibus", report(b, start))
			_ = s.Close()
		})

		b.Run("watermill", func(b *testing.B) {
			topic := benchTopic(qt, "watermill")
			declare(b, conn, topic, qt)
			fill(b, conn, topic, b.N)
			sub, err := wamqp.NewSubscriber(watermillConfig(url, qt), watermill.NopLogger{})
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Close()
			sctx, cancel := context.WithCancel(ctx)
			defer cancel()
			b.ResetTimer()
			start := begin()
			msgs, err := sub.Subscribe(sctx, topic)
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; i < b.N; i++ {
				m := <-msgs
				m.Ack()
			}
			r.set("watermill", report(b, start))
		})
		r.logRatios(b, "consume+ack "+qt, "raw-ack-each", "raw-ack-multiple", "watermill")
	})
}
