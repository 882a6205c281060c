package nsq_test

// Benchmarks against real nsqds, comparing in one run the raw go-nsq
// client and omnibus on the same work: 256-byte payloads, publish waiting
// for nsqd's OK, consume with FIN per message. Each runs against two
// nsqds: "durable", the one of scripts/brokers (--mem-queue-size=0
// --sync-every=1: an fsync per message written and read, the broker's disk
// is the bottleneck), and "memory", an nsqd the benchmark starts with
// nsqd's default flags (messages in memory: the clients' own costs show).
// Run:
//
//	eval "$(scripts/brokers up nsq)"
//	go test -run XXX -bench . -benchtime 5000x ./adapters/nsq/
//
// Publish1: 8 goroutines share b.N messages, one per call (raw:
// Producer.Publish on one shared Producer, the go-nsq idiom; omnibus:
// Client.Publish). Publish100: one goroutine, 100 messages per call (raw:
// Producer.MultiPublish; omnibus: Client.Publish of 100). ConsumeAck: the
// channel is filled first (untimed, raw MPUB), then b.N messages are
// received and FINed with 256 in flight (raw: a Consumer with
// MaxInFlight 256 whose handler returns nil, so go-nsq FINs; omnibus:
// Subscribe with Prefetch(256), Receive and Ack each). Each run reports
// msg/s and cpu-µs/msg, the client process's user+system CPU per message;
// the parent benchmark prints the omnibus/raw ratio of its last run.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gonsq "github.com/nsqio/go-nsq"

	"github.com/omnibusmq/omnibus/adapters/nsq"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

var benchPayload = func() []byte {
	p := make([]byte, 256)
	for i := range p {
		p[i] = byte('a' + i%26)
	}
	return p
}()

type benchEnv struct {
	name, url, addr string
}

// benchEnvs returns the durable nsqd of scripts/brokers and an nsqd with
// default flags started for this benchmark.
func benchEnvs(b *testing.B) []benchEnv {
	durable := brokerEnv(b, envURL)[0]
	var envs []benchEnv
	for _, e := range []benchEnv{{name: "durable", url: durable}, {name: "memory", url: ownNSQD(b, "")}} {
		addr, _, err := nsq.ParseURL(e.url)
		if err != nil {
			b.Fatal(err)
		}
		e.addr = addr
		envs = append(envs, e)
	}
	return envs
}

func rawProducer(b *testing.B, addr string) *gonsq.Producer {
	p, err := gonsq.NewProducer(addr, gonsq.NewConfig())
	if err != nil {
		b.Fatal(err)
	}
	p.SetLogger(nil, gonsq.LogLevelError)
	b.Cleanup(p.Stop)
	return p
}

// measure runs fn (which does b.N messages) between the timer and CPU
// readings and reports msg/s and cpu-µs/msg; it returns msg/s.
func measure(b *testing.B, fn func()) float64 {
	cpu0 := integration.ProcessCPU()
	start := time.Now()
	b.ResetTimer()
	fn()
	b.StopTimer()
	el := time.Since(start)
	rate := float64(b.N) / el.Seconds()
	b.ReportMetric(rate, "msg/s")
	b.ReportMetric(float64((integration.ProcessCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/msg")
	return rate
}

type ratios struct {
	mu sync.Mutex
	m  map[string]float64
}

func (r *ratios) set(k string, v float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.m[k] = v
}

func (r *ratios) print(what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if raw, om := r.m["raw"], r.m["omnibus"]; raw > 0 && om > 0 {
		fmt.Printf("ratio %s: omnibus %.0f msg/s = %.2fx raw go-nsq (%.0f msg/s)\n", what, om, om/raw, raw)
	}
}

func BenchmarkPublish1(b *testing.B) {
	for _, env := range benchEnvs(b) {
		b.Run("nsqd="+env.name, func(b *testing.B) {
			const goroutines = 8
			r := &ratios{m: map[string]float64{}}
			share := func(n int, each func(int) error) error {
				var next atomic.Int64
				var wg sync.WaitGroup
				errs := make(chan error, goroutines)
				for range goroutines {
					wg.Go(func() {
						for i := next.Add(1); i <= int64(n); i = next.Add(1) {
							if err := each(int(i)); err != nil {
								errs <- err
								return
							}
						}
					})
				}
				wg.Wait()
				close(errs)
				return <-errs
			}
			b.Run("raw", func(b *testing.B) {
				p := rawProducer(b, env.addr)
				topic := topicName("bench-pub1-raw")
				var err error
				r.set("raw", measure(b, func() {
					err = share(b.N, func(int) error { return p.Publish(topic, benchPayload) })
				}))
				if err != nil {
					b.Fatal(err)
				}
			})
			b.Run("omnibus", func(b *testing.B) {
				c := open(b, env.url)
				topic := topicName("bench-pub1-omnibus")
				ctx := context.Background()
				var err error
				r.set("omnibus", measure(b, func() {
					err = share(b.N, func(int) error { return c.Publish(ctx, topic, &pubsub.Message{Payload: benchPayload}) })
				}))
				if err != nil {
					b.Fatal(err)
				}
			})
			r.print(env.name + ": publish 8 goroutines x 1 msg")
		})
	}
}

func BenchmarkPublish100(b *testing.B) {
	for _, env := range benchEnvs(b) {
		b.Run("nsqd="+env.name, func(b *testing.B) {
			const batch = 100
			r := &ratios{m: map[string]float64{}}
			b.Run("raw", func(b *testing.B) {
				p := rawProducer(b, env.addr)
				topic := topicName("bench-pub100-raw")
				bodies := make([][]byte, batch)
				for i := range bodies {
					bodies[i] = benchPayload
				}
				var err error
				r.set("raw", measure(b, func() {
					for done := 0; done < b.N && err == nil; done += batch {
						err = p.MultiPublish(topic, bodies[:min(batch, b.N-done)])
					}
				}))
				if err != nil {
					b.Fatal(err)
				}
			})
			b.Run("omnibus", func(b *testing.B) {
				c := open(b, env.url)
				topic := topicName("bench-pub100-omnibus")
				ctx := context.Background()
				var err error
				r.set("omnibus", measure(b, func() {
					for done := 0; done < b.N && err == nil; done += batch {
						msgs := make([]*pubsub.Message, min(batch, b.N-done))
						for i := range msgs {
							msgs[i] = &pubsub.Message{Payload: benchPayload}
						}
						err = c.Publish(ctx, topic, msgs...)
					}
				}))
				if err != nil {
					b.Fatal(err)
				}
			})
			r.print(env.name + ": publish 1 goroutine x 100 msgs")
		})
	}
}

// createChannel makes sure topic has the channel before it is filled, so
// that the channel gets every message.
func createChannel(b *testing.B, c *pubsub.Client, topic, channel string) {
	b.Helper()
	s, err := c.Subscribe(context.Background(), topic, pubsub.Group(channel))
	if err != nil {
		b.Fatal(err)
	}
	_ = s.Close()
}

func BenchmarkConsumeAck(b *testing.B) {
	for _, env := range benchEnvs(b) {
		b.Run("nsqd="+env.name, func(b *testing.B) {
			const inFlight = 256
			r := &ratios{m: map[string]float64{}}
			b.Run("raw", func(b *testing.B) {
				topic := topicName("bench-consume-raw")
				b.StopTimer()
				createChannel(b, open(b, env.url), topic, "bench")
				p := rawProducer(b, env.addr)
				bodies := make([][]byte, 100)
				for i := range bodies {
					bodies[i] = benchPayload
				}
				for done := 0; done < b.N; done += 100 {
					if err := p.MultiPublish(topic, bodies[:min(100, b.N-done)]); err != nil {
						b.Fatal(err)
					}
				}
				cfg := gonsq.NewConfig()
				cfg.MaxInFlight = inFlight
				cons, err := gonsq.NewConsumer(topic, "bench", cfg)
				if err != nil {
					b.Fatal(err)
				}
				cons.SetLogger(nil, gonsq.LogLevelError)
				var got atomic.Int64
				done := make(chan struct{})
				cons.AddHandler(gonsq.HandlerFunc(func(*gonsq.Message) error {
					if got.Add(1) == int64(b.N) {
						close(done)
					}
					return nil // go-nsq FINs
				}))
				r.set("raw", measure(b, func() {
					if err := cons.ConnectToNSQD(env.addr); err != nil {
						b.Fatal(err)
					}
					select {
					case <-done:
					case <-time.After(5 * time.Minute):
						b.Fatalf("received %d of %d", got.Load(), b.N)
					}
				}))
				cons.Stop()
				<-cons.StopChan
			})
			b.Run("omnibus", func(b *testing.B) {
				topic := topicName("bench-consume-omnibus")
				b.StopTimer()
				c := open(b, env.url)
				createChannel(b, c, topic, "bench")
				for done := 0; done < b.N; done += 100 {
					msgs := make([]*pubsub.Message, min(100, b.N-done))
					for i := range msgs {
						msgs[i] = &pubsub.Message{Payload: benchPayload}
					}
					if err := c.Publish(context.Background(), topic, msgs...); err != nil {
						b.Fatal(err)
					}
				}
				s, err := c.Subscribe(context.Background(), topic, pubsub.Group("bench"), pubsub.Prefetch(inFlight))
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				r.set("omnibus", measure(b, func() {
					for i := 0; i < b.N; i++ {
						d, err := s.Receive(ctx)
						if err != nil {
							b.Fatal(err)
						}
						if err := d.Ack(); err != nil {
							b.Fatal(err)
						}
					}
				}))
				_ = s.Close()
			})
			r.print(env.name + ": consume + FIN, 256 in flight")
		})
	}
}
