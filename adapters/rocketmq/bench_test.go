package rocketmq_test

// Benchmarks against the RocketMQ 5.3.3 of scripts/brokers (name server,
// broker, proxy), comparing in one run the raw gRPC client
// (rocketmq-clients/golang/v5) and omnibus on the same work: 256-byte
// payloads. Run:
//
//	eval "$(scripts/brokers up rocketmq)"
//	cd adapters/rocketmq && GOWORK=off go test -run XXX -bench . -benchtime 2000x .
//
// Publish1: 8 goroutines share b.N messages, one per call, each answered
// by the broker (raw: Producer.Send on one shared producer; omnibus:
// Client.Publish). ConsumeAck: the topic is filled first (untimed), then
// b.N messages are received and acknowledged one by one (raw: a
// SimpleConsumer receiving up to 32 at a time, 8 goroutines acking;
// omnibus: Subscribe, Receive and Ack each). Each run reports msg/s and
// cpu-µs/msg, the client process's user+system CPU per message; the parent
// benchmark prints the omnibus/raw ratio.

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	rmq "github.com/apache/rocketmq-clients/golang/v5"
	"github.com/apache/rocketmq-clients/golang/v5/credentials"
	v2 "github.com/apache/rocketmq-clients/golang/v5/protocol/v2"

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

func benchOpen(b *testing.B, u string) *pubsub.Client {
	b.Helper()
	c, err := pubsub.Open(context.Background(), u)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	return c
}

func rawConfig(b *testing.B, u, group string) *rmq.Config {
	b.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		b.Fatal(err)
	}
	return &rmq.Config{Endpoint: pu.Host, ConsumerGroup: group, Credentials: &credentials.SessionCredentials{}}
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
		fmt.Printf("ratio %s: omnibus %.0f msg/s = %.2fx raw rocketmq-clients/golang/v5 (%.0f msg/s)\n", what, om, om/raw, raw)
	}
}

// share runs each(i) for i in 1..n on goroutines goroutines; the first
// error is returned.
func share(goroutines, n int, each func(int) error) error {
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

// fill creates topic and group (the group starting at the topic's start)
// and publishes n messages, untimed.
func fill(b *testing.B, c *pubsub.Client, topic, group string, n int) {
	b.Helper()
	ctx := context.Background()
	s, err := c.Subscribe(ctx, topic, pubsub.Group(group), pubsub.FromOldest())
	if err != nil {
		b.Fatal(err)
	}
	_ = s.Close()
	for done := 0; done < n; done += 100 {
		msgs := make([]*pubsub.Message, min(100, n-done))
		for i := range msgs {
			msgs[i] = &pubsub.Message{Payload: benchPayload}
		}
		if err := c.Publish(ctx, topic, msgs...); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPublish1(b *testing.B) {
	u := integration.RocketMQ(b)
	const goroutines = 8
	r := &ratios{m: map[string]float64{}}
	ctx := context.Background()
	b.Run("raw", func(b *testing.B) {
		topic := topicName("bench-pub1-raw")
		fill(b, benchOpen(b, u), topic, "bench", 0)
		p, err := rmq.NewProducer(rawConfig(b, u, ""), rmq.WithTopics(topic))
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Start(); err != nil {
			b.Fatal(err)
		}
		defer p.GracefulStop()
		r.set("raw", measure(b, func() {
			err = share(goroutines, b.N, func(int) error {
				_, err := p.Send(ctx, &rmq.Message{Topic: topic, Body: benchPayload})
				return err
			})
		}))
		if err != nil {
			b.Fatal(err)
		}
	})
	b.Run("omnibus", func(b *testing.B) {
		c := benchOpen(b, u)
		topic := topicName("bench-pub1-omnibus")
		var err error
		r.set("omnibus", measure(b, func() {
			err = share(goroutines, b.N, func(int) error { return c.Publish(ctx, topic, &pubsub.Message{Payload: benchPayload}) })
		}))
		if err != nil {
			b.Fatal(err)
		}
	})
	r.print("publish 8 goroutines x 1 msg")
}

func BenchmarkConsumeAck(b *testing.B) {
	u := integration.RocketMQ(b)
	r := &ratios{m: map[string]float64{}}
	ctx := context.Background()
	b.Run("raw", func(b *testing.B) {
		b.StopTimer()
		topic := topicName("bench-consume-raw")
		fill(b, benchOpen(b, u), topic, "bench", b.N)
		sc, err := rmq.NewSimpleConsumer(rawConfig(b, u, "bench"),
			rmq.WithSimpleAwaitDuration(10*time.Second),
			rmq.WithSimpleSubscriptionExpressions(map[string]*rmq.FilterExpression{topic: rmq.SUB_ALL}))
		if err != nil {
			b.Fatal(err)
		}
		if err := sc.Start(); err != nil {
			b.Fatal(err)
		}
		defer sc.GracefulStop()
		r.set("raw", measure(b, func() {
			views := make(chan *rmq.MessageView, 64)
			var acked atomic.Int64
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					for mv := range views {
						if err := sc.Ack(ctx, mv); err != nil {
							b.Error(err)
						}
						acked.Add(1)
					}
				})
			}
			deadline := time.Now().Add(5 * time.Minute)
			for got := 0; got < b.N; {
				if time.Now().After(deadline) {
					b.Errorf("received %d of %d", got, b.N)
					break
				}
				mvs, err := sc.Receive(ctx, 32, 30*time.Second)
				var st *rmq.ErrRpcStatus
				if errors.As(err, &st) && v2.Code(st.Code) == v2.Code_MESSAGE_NOT_FOUND {
					continue
				}
				if err != nil {
					b.Error(err)
					break
				}
				for _, mv := range mvs {
					views <- mv
				}
				got += len(mvs)
			}
			close(views)
			wg.Wait()
		}))
	})
	b.Run("omnibus", func(b *testing.B) {
		b.StopTimer()
		c := benchOpen(b, u)
		topic := topicName("bench-consume-omnibus")
		fill(b, c, topic, "bench", b.N)
		s, err := c.Subscribe(ctx, topic, pubsub.Group("bench"))
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
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
	})
	r.print("consume + ack")
}
