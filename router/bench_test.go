package router_test

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	wmw "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

// The benchmarks measure one pipeline end to end, in one run, on omnibus
// (router + mem://) and on Watermill v1.5.1 (router + gochannel): a publisher
// sends b.N messages of 64 bytes in batches of 100 while the router handles
// and acks them; the clock stops when the handler has seen the last one.
// "noop" has no middleware; "mw" has recover+retry+dedup+poison (the
// handler always succeeds, so Retry and Poison never fire, but Dedup claims
// and completes every message ID). Compare the msg/s metric.
//
//	go test -run '^$' -bench . -benchtime 200000x ./router/

var benchPayload = make([]byte, 64)

const benchPublishBatch = 100

func BenchmarkRouter(b *testing.B) {
	for _, mw := range []bool{false, true} {
		name := "noop"
		if mw {
			name = "mw"
		}
		b.Run("watermill/"+name, func(b *testing.B) { benchWatermill(b, mw) })
		b.Run("omnibus/"+name+"/conc=1", func(b *testing.B) { benchOmnibus(b, mw, router.Concurrency(1)) })
		b.Run("omnibus/"+name+"/conc=4", func(b *testing.B) { benchOmnibus(b, mw, router.Concurrency(4)) })
		b.Run("omnibus/"+name+"/ordered-by-key/conc=8", func(b *testing.B) {
			benchOmnibus(b, mw, router.Concurrency(8), router.OrderedByKey())
		})
	}
}

func reportRate(b *testing.B, start time.Time) {
	el := time.Since(start)
	b.ReportMetric(float64(b.N)/el.Seconds(), "msg/s")
}

func benchOmnibus(b *testing.B, withMW bool, opts ...router.HandlerOption) {
	c := memory.NewClient(memory.Options{})
	defer c.Close()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := router.New(c, router.Options{Logger: quiet})
	if withMW {
		r.Use(
			middleware.Poison(c, "bench.poison"),
			middleware.Retry(middleware.RetryPolicy{}),
			middleware.Dedup(middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{MaxKeys: 1 << 20}), middleware.DedupOptions{}),
			middleware.Recover(),
		)
	}
	var seen atomic.Int64
	done := make(chan struct{})
	n := int64(b.N)
	r.Handle("bench", "g", func(ctx context.Context, m *pubsub.Message) error {
		if seen.Add(1) == n {
			close(done)
		}
		return nil
	}, opts...)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	// Subscribe first (Run subscribes before it processes), then publish.
	started := make(chan struct{})
	go func() { close(started); errc <- r.Run(ctx) }()
	<-started
	b.ReportAllocs()
	b.ResetTimer()
	t0 := time.Now()
	go func() {
		batch := make([]*pubsub.Message, 0, benchPublishBatch)
		for i := 0; i < b.N; i++ {
			batch = append(batch, &pubsub.Message{Key: "k" + strconv.Itoa(i%64), Payload: benchPayload})
			if len(batch) == benchPublishBatch || i == b.N-1 {
				if err := c.Publish(context.Background(), "bench", batch...); err != nil {
					b.Error(err)
					return
				}
				batch = batch[:0]
			}
		}
	}()
	select {
	case <-done:
	case err := <-errc:
		b.Fatalf("Run: %v", err)
	}
	b.StopTimer()
	reportRate(b, t0)
	cancel()
	if err := <-errc; err != nil {
		b.Fatalf("Run: %v", err)
	}
}

func benchWatermill(b *testing.B, withMW bool) {
	logger := watermill.NopLogger{}
	gc := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 1024}, logger)
	defer gc.Close()
	wr, err := message.NewRouter(message.RouterConfig{}, logger)
	if err != nil {
		b.Fatal(err)
	}
	if withMW {
		poison, err := wmw.PoisonQueue(gc, "bench.poison")
		if err != nil {
			b.Fatal(err)
		}
		repo, err := wmw.NewMapExpiringKeyRepository(time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		dedup := &wmw.Deduplicator{
			KeyFactory: func(m *message.Message) (string, error) { return m.UUID, nil },
			Repository: repo,
		}
		wr.AddMiddleware(
			poison,
			wmw.Retry{MaxRetries: 4, InitialInterval: 100 * time.Millisecond, Multiplier: 2, Logger: logger}.Middleware,
			dedup.Middleware,
			wmw.Recoverer,
		)
	}
	var seen atomic.Int64
	done := make(chan struct{})
	n := int64(b.N)
	wr.AddConsumerHandler("g", "bench", gc, func(m *message.Message) error {
		if seen.Add(1) == n {
			close(done)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- wr.Run(ctx) }()
	<-wr.Running()
	b.ReportAllocs()
	b.ResetTimer()
	t0 := time.Now()
	go func() {
		batch := make([]*message.Message, 0, benchPublishBatch)
		for i := 0; i < b.N; i++ {
			m := message.NewMessage(watermill.NewUUID(), benchPayload)
			m.Metadata.Set("key", "k"+strconv.Itoa(i%64))
			batch = append(batch, m)
			if len(batch) == benchPublishBatch || i == b.N-1 {
				if err := gc.Publish("bench", batch...); err != nil {
					b.Error(err)
					return
				}
				batch = batch[:0]
			}
		}
	}()
	select {
	case <-done:
	case err := <-errc:
		b.Fatalf("watermill Run: %v", err)
	}
	b.StopTimer()
	reportRate(b, t0)
	cancel()
	<-errc
}
