package bench_test

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

// The benchmarks measure one pipeline end to end on omnibus (router +
// mem://) and on Watermill v1.5.1 (router + gochannel): a publisher sends
// messages of 64 bytes, each with its own new ID and one of 64 keys, in
// batches of 100, while the router handles and acks them; the clock stops
// when the handler has counted the last one. "noop" has no middleware;
// "mw" has each library's own recover+retry+dedup+poison (the handler
// always succeeds, so Retry and Poison never fire, but both Dedups record
// every message ID in an in-memory store).
//
// BenchmarkRouter runs each pipeline alone (msg/s). BenchmarkVsWatermill
// keeps both pipelines of a pair running and alternates rounds of
// benchRound messages between them, so that both see the same machine load
// even when it swings, and reports omnibus's speed as a multiple of
// Watermill's (x-watermill):
//
//	go test -run '^$' -bench . -benchtime 200000x -count 3 ./bench/

var benchPayload = make([]byte, 64)

const (
	benchPublishBatch = 100
	benchRound        = 5000
)

type variant struct {
	name string
	opts []router.HandlerOption
}

var omnibusVariants = []variant{
	{"conc=1", []router.HandlerOption{router.Concurrency(1)}},
	{"conc=4", []router.HandlerOption{router.Concurrency(4)}},
	{"ordered-by-key/conc=8", []router.HandlerOption{router.Concurrency(8), router.OrderedByKey()}},
}

func modeName(mw bool) string {
	if mw {
		return "mw"
	}
	return "noop"
}

func BenchmarkRouter(b *testing.B) {
	for _, mw := range []bool{false, true} {
		b.Run("watermill/"+modeName(mw), func(b *testing.B) {
			p := startWatermill(b, mw)
			defer p.stop()
			measure(b, p)
		})
		for _, v := range omnibusVariants {
			b.Run("omnibus/"+modeName(mw)+"/"+v.name, func(b *testing.B) {
				p := startOmnibus(b, mw, v.opts...)
				defer p.stop()
				measure(b, p)
			})
		}
	}
}

func measure(b *testing.B, p *pipeline) {
	b.ReportAllocs()
	b.ResetTimer()
	el := p.run(b, b.N)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "msg/s")
}

func BenchmarkVsWatermill(b *testing.B) {
	for _, mw := range []bool{false, true} {
		for _, v := range omnibusVariants {
			b.Run(modeName(mw)+"/"+v.name, func(b *testing.B) {
				wm := startWatermill(b, mw)
				defer wm.stop()
				om := startOmnibus(b, mw, v.opts...)
				defer om.stop()
				var tw, to time.Duration
				b.ResetTimer()
				for left := b.N; left > 0; left -= benchRound {
					n := min(left, benchRound)
					tw += wm.run(b, n)
					to += om.run(b, n)
				}
				b.StopTimer()
				b.ReportMetric(float64(b.N)/tw.Seconds(), "watermill-msg/s")
				b.ReportMetric(float64(b.N)/to.Seconds(), "omnibus-msg/s")
				b.ReportMetric(tw.Seconds()/to.Seconds(), "x-watermill")
			})
		}
	}
}

// pipeline is a running router with a counting handler and the means to
// publish to it.
type pipeline struct {
	publish func(i int) error // publishes the batch of messages ending with number i
	seen    atomic.Int64      // messages handled
	target  atomic.Int64      // seen value that signals reached
	reached chan struct{}
	errc    chan error // from the router's Run
	stop    func()
}

func newPipeline() *pipeline {
	p := &pipeline{reached: make(chan struct{}, 1), errc: make(chan error, 1)}
	p.target.Store(-1)
	return p
}

// handled is the handler's work on both sides: count, and signal the round's
// last message.
func (p *pipeline) handled() {
	if p.seen.Add(1) == p.target.Load() {
		p.reached <- struct{}{}
	}
}

// run publishes n messages in batches and returns how long it took until
// the handler had seen them all.
func (p *pipeline) run(b *testing.B, n int) time.Duration {
	p.target.Store(p.seen.Load() + int64(n))
	start := time.Now()
	published := make(chan struct{})
	go func() {
		defer close(published)
		for i := benchPublishBatch - 1; i < n+benchPublishBatch-1; i += benchPublishBatch {
			if err := p.publish(min(i, n-1)); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	select {
	case <-p.reached:
	case err := <-p.errc:
		b.Fatalf("Run: %v", err)
	}
	el := time.Since(start)
	<-published // the next round reuses the batch
	return el
}

func startOmnibus(b *testing.B, withMW bool, opts ...router.HandlerOption) *pipeline {
	c := memory.NewClient(memory.Options{})
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	r := router.New(c, router.Options{Logger: quiet})
	if withMW {
		r.Use(
			middleware.Poison(c, "bench.poison", middleware.PoisonOptions{}),
			middleware.Retry(middleware.RetryOptions{}),
			middleware.Dedup(middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{MaxKeys: 1 << 20}), middleware.DedupOptions{}),
			middleware.Recover(),
		)
	}
	p := newPipeline()
	r.Handle("bench", "g", func(ctx context.Context, m *pubsub.Message) error {
		p.handled()
		return nil
	}, opts...)
	batch := make([]*pubsub.Message, 0, benchPublishBatch)
	p.publish = func(last int) error {
		for i := last - last%benchPublishBatch; i <= last; i++ {
			batch = append(batch, &pubsub.Message{Key: "k" + strconv.Itoa(i%64), Payload: benchPayload})
		}
		err := c.Publish(context.Background(), "bench", batch...)
		batch = batch[:0]
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { p.errc <- r.Run(ctx) }()
	select {
	case <-r.Running():
	case err := <-p.errc:
		b.Fatalf("Run: %v", err)
	}
	p.stop = func() {
		cancel()
		if err := <-p.errc; err != nil {
			b.Errorf("Run: %v", err)
		}
		_ = c.Close()
	}
	return p
}

func startWatermill(b *testing.B, withMW bool) *pipeline {
	logger := watermill.NopLogger{}
	gc := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: 1024}, logger)
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
	p := newPipeline()
	wr.AddConsumerHandler("g", "bench", gc, func(m *message.Message) error {
		p.handled()
		return nil
	})
	batch := make([]*message.Message, 0, benchPublishBatch)
	p.publish = func(last int) error {
		for i := last - last%benchPublishBatch; i <= last; i++ {
			m := message.NewMessage(watermill.NewUUID(), benchPayload)
			m.Metadata.Set("key", "k"+strconv.Itoa(i%64))
			batch = append(batch, m)
		}
		err := gc.Publish("bench", batch...)
		batch = batch[:0]
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { p.errc <- wr.Run(ctx) }()
	<-wr.Running()
	p.stop = func() {
		cancel()
		<-p.errc
		_ = gc.Close()
	}
	return p
}
