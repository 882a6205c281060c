package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// BenchCmd measures publish and consume throughput and end-to-end latency.
type BenchCmd struct {
	URL        string `arg:"" optional:"" help:"Broker URL (default: $OMNIBUS_URL)." env:"OMNIBUS_URL"`
	Messages   int    `default:"20000" help:"Messages per run."`
	Size       int    `default:"100" help:"Payload bytes (at least 8)."`
	Batch      int    `default:"100" help:"Messages per Publish call."`
	Publishers int    `default:"4" help:"Concurrent publishers."`
	Compare    bool   `help:"Also run the same load straight on the adapter's driver (no portable layer) and report the ratio."`
	Out        string `default:"bench-out" help:"Directory for bench.md, bench.svg and bench.png."`
	JSON       bool   `help:"Print the results as one JSON object instead of the markdown table (files are still written)."`
	Keep       bool   `help:"Keep the bench topics and their queues/groups on the broker (default: deleted at the end where the adapter can)."`

	topics []string // made by this run, deleted at the end unless --keep
}

type benchResult struct {
	name               string
	pubRate, consRate  float64
	p50, p90, p99, max time.Duration
}

// benchJSON is one result as --json prints it.
type benchJSON struct {
	Client        string  `json:"client"`
	PublishPerSec float64 `json:"publish_per_sec"`
	ConsumePerSec float64 `json:"consume_ack_per_sec"`
	P50Millis     float64 `json:"latency_p50_ms"`
	P90Millis     float64 `json:"latency_p90_ms"`
	P99Millis     float64 `json:"latency_p99_ms"`
	MaxMillis     float64 `json:"latency_max_ms"`
}

func millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// Run benchmarks.
func (b *BenchCmd) Run(ctx context.Context) error {
	if b.URL == "" {
		return usagef("bench: give a URL or set OMNIBUS_URL")
	}
	if b.Messages < 1 || b.Size < 8 || b.Batch < 1 || b.Publishers < 1 {
		return usagef("bench: --messages=%d --size=%d --batch=%d --publishers=%d: want messages ≥ 1, size ≥ 8, batch ≥ 1, publishers ≥ 1",
			b.Messages, b.Size, b.Batch, b.Publishers)
	}
	c, err := pubsub.Open(ctx, b.URL)
	if err != nil {
		return err
	}
	defer c.Close()
	defer b.cleanup(c)
	fmt.Fprintf(stderr, "omnibus bench %s: %d messages of %d bytes, %d publishers, %d per call\n",
		pubsub.Redact(b.URL), b.Messages, b.Size, b.Publishers, b.Batch)
	var results []benchResult
	r, err := b.runOmnibus(ctx, c)
	if err != nil {
		return err
	}
	results = append(results, r)
	if b.Compare {
		r, err := b.runDriver(ctx, c.Driver())
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	var md strings.Builder
	fmt.Fprintf(&md, "omnibus bench `%s` — %d messages × %d bytes, %d publishers × %d per call (%s)\n\n",
		pubsub.Redact(b.URL), b.Messages, b.Size, b.Publishers, b.Batch, time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&md, "| client | publish msg/s | consume+ack msg/s | latency p50 | p90 | p99 | max |\n|---|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range results {
		fmt.Fprintf(&md, "| %s | %.0f | %.0f | %v | %v | %v | %v |\n", r.name, r.pubRate, r.consRate, r.p50, r.p90, r.p99, r.max)
	}
	if len(results) == 2 {
		fmt.Fprintf(&md, "\nomnibus / driver: publish %.2f×, consume %.2f×\n", results[0].pubRate/results[1].pubRate, results[0].consRate/results[1].consRate)
	}
	if b.JSON {
		out := struct {
			URL        string      `json:"url"`
			Messages   int         `json:"messages"`
			Size       int         `json:"size"`
			Batch      int         `json:"batch"`
			Publishers int         `json:"publishers"`
			Results    []benchJSON `json:"results"`
		}{URL: pubsub.Redact(b.URL), Messages: b.Messages, Size: b.Size, Batch: b.Batch, Publishers: b.Publishers}
		for _, r := range results {
			out.Results = append(out.Results, benchJSON{Client: r.name, PublishPerSec: r.pubRate, ConsumePerSec: r.consRate,
				P50Millis: millis(r.p50), P90Millis: millis(r.p90), P99Millis: millis(r.p99), MaxMillis: millis(r.max)})
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
	} else {
		fmt.Fprint(stdout, md.String())
	}
	if err := os.MkdirAll(b.Out, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.Out, "bench.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	title := "omnibus bench " + pubsub.Redact(b.URL)
	f, err := os.Create(filepath.Join(b.Out, "bench.svg"))
	if err != nil {
		return err
	}
	writeChart(f, title, results)
	if err := f.Close(); err != nil {
		return err
	}
	pf, err := os.Create(filepath.Join(b.Out, "bench.png"))
	if err != nil {
		return err
	}
	if err := writePNGChart(pf, title, results); err != nil {
		pf.Close()
		return err
	}
	if err := pf.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s, %s and %s\n", filepath.Join(b.Out, "bench.md"), filepath.Join(b.Out, "bench.svg"), filepath.Join(b.Out, "bench.png"))
	return nil
}

func (b *BenchCmd) payload() []byte {
	p := make([]byte, b.Size)
	binary.BigEndian.PutUint64(p, uint64(time.Now().UnixNano()))
	return p
}

func latency(p []byte, now time.Time) time.Duration {
	if len(p) < 8 {
		return 0
	}
	return now.Sub(time.Unix(0, int64(binary.BigEndian.Uint64(p))))
}

// runLoad publishes with b.Publishers goroutines through send and consumes
// through recv until every message was received.
func (b *BenchCmd) runLoad(ctx context.Context, name string, send func(context.Context, int) error,
	recv func(context.Context) ([]time.Duration, error)) (benchResult, error) {
	bar := newProgress(b.Messages, name)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, b.Publishers+1)
	calls := (b.Messages + b.Batch - 1) / b.Batch
	next := make(chan int, calls)
	for i := 0; i < calls; i++ {
		next <- min(b.Batch, b.Messages-i*b.Batch)
	}
	close(next)
	for p := 0; p < b.Publishers; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range next {
				if err := send(ctx, n); err != nil {
					errc <- err
					cancel()
					return
				}
			}
		}()
	}
	pubDoneCh := make(chan time.Duration, 1)
	go func() { wg.Wait(); pubDoneCh <- time.Since(start) }()
	lats := make([]time.Duration, 0, b.Messages)
	for len(lats) < b.Messages {
		l, err := recv(ctx)
		if err != nil {
			select {
			case perr := <-errc:
				return benchResult{}, perr
			default:
			}
			return benchResult{}, fmt.Errorf("bench %s: after %d of %d: %w", name, len(lats), b.Messages, err)
		}
		lats = append(lats, l...)
		bar.add(len(l))
	}
	consDone := time.Since(start)
	pubDone := <-pubDoneCh
	bar.stop()
	slices.Sort(lats)
	q := func(f float64) time.Duration {
		return lats[min(len(lats)-1, int(f*float64(len(lats))))].Round(time.Microsecond)
	}
	if pubDone == 0 {
		pubDone = consDone
	}
	return benchResult{name: name, pubRate: float64(b.Messages) / pubDone.Seconds(), consRate: float64(len(lats)) / consDone.Seconds(),
		p50: q(0.5), p90: q(0.9), p99: q(0.99), max: lats[len(lats)-1].Round(time.Microsecond)}, nil
}

func (b *BenchCmd) benchTopic() string {
	t := "omnibus.bench." + strings.ReplaceAll(pubsub.NewID(), "-", "")[:16]
	b.topics = append(b.topics, t)
	return t
}

// benchGroup is the consumer group of every bench run.
const benchGroup = "bench"

// cleanup deletes the run's topics (with their group) unless --keep, and
// says which are left where the adapter cannot delete topics.
func (b *BenchCmd) cleanup(c *pubsub.Client) {
	if b.Keep {
		if len(b.topics) > 0 {
			fmt.Fprintf(stderr, "bench: kept topic(s) %s (group %s)\n", strings.Join(b.topics, ", "), benchGroup)
		}
		return
	}
	for _, t := range b.topics {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := c.DeleteTopic(ctx, t, benchGroup)
		cancel()
		switch {
		case errors.Is(err, pubsub.ErrUnsupported):
			fmt.Fprintf(stderr, "bench: topic %s (group %s) is left on the broker: this adapter cannot delete topics; remove it with the broker's tools\n", t, benchGroup)
		case err != nil:
			fmt.Fprintf(stderr, "bench: could not delete topic %s: %v\n", t, err)
		}
	}
}

func (b *BenchCmd) runOmnibus(ctx context.Context, c *pubsub.Client) (benchResult, error) {
	topic := b.benchTopic()
	sub, err := c.Subscribe(ctx, topic, pubsub.Group(benchGroup), pubsub.FromOldest(), pubsub.Prefetch(256))
	if err != nil {
		return benchResult{}, err
	}
	defer sub.Close()
	return b.runLoad(ctx, "omnibus", func(ctx context.Context, n int) error {
		msgs := make([]*pubsub.Message, n)
		for i := range msgs {
			msgs[i] = &pubsub.Message{Key: fmt.Sprintf("k%d", i%64), Payload: b.payload()}
		}
		return c.Publish(ctx, topic, msgs...)
	}, func(ctx context.Context) ([]time.Duration, error) {
		d, err := sub.Receive(ctx)
		if err != nil {
			return nil, err
		}
		l := latency(d.Message.Payload, time.Now())
		return []time.Duration{l}, d.Ack()
	})
}

func (b *BenchCmd) runDriver(ctx context.Context, drv driver.Broker) (benchResult, error) {
	topic := b.benchTopic()
	// As pubsub.Client.Subscribe does: ask for the oldest message only where
	// the adapter can replay (the others refuse the option).
	sub, err := drv.OpenSubscription(ctx, topic, driver.SubscriptionOptions{Group: benchGroup, StartFromOldest: drv.Capabilities().Replay, MaxBatch: 256})
	if err != nil {
		return benchResult{}, err
	}
	defer sub.Close()
	return b.runLoad(ctx, "driver (no portable layer)", func(ctx context.Context, n int) error {
		msgs := make([]*driver.Message, n)
		for i := range msgs {
			msgs[i] = &driver.Message{ID: pubsub.NewID(), Key: fmt.Sprintf("k%d", i%64), Payload: b.payload()}
		}
		return drv.SendBatch(ctx, topic, msgs)
	}, func(ctx context.Context) ([]time.Duration, error) {
		ms, err := sub.ReceiveBatch(ctx, 256)
		if err != nil {
			return nil, err
		}
		now := time.Now()
		ids := make([]driver.AckID, len(ms))
		lats := make([]time.Duration, len(ms))
		for i, m := range ms {
			ids[i], lats[i] = m.AckID, latency(m.Payload, now)
		}
		if len(ids) > 0 {
			if err := sub.SendAcks(ctx, ids); err != nil {
				return nil, err
			}
		}
		return lats, nil
	})
}

// writeChart draws grouped bars (publish, consume) per client as SVG.
func writeChart(w io.Writer, title string, rs []benchResult) {
	const width, height, left, bottom, top = 720, 360, 90, 60, 50
	maxRate := 1.0
	for _, r := range rs {
		maxRate = max(maxRate, r.pubRate, r.consRate)
	}
	maxRate *= 1.15 // headroom for the value labels
	plotH := float64(height - bottom - top)
	groupW := float64(width-left-20) / float64(len(rs))
	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	fmt.Fprintf(w, `<rect width="100%%" height="100%%" fill="white"/><text x="%d" y="24" font-size="15">%s (msg/s)</text>`+"\n", left, html.EscapeString(title))
	for i := 0; i <= 4; i++ {
		y := float64(height-bottom) - plotH*float64(i)/4
		fmt.Fprintf(w, `<line x1="%d" x2="%d" y1="%.0f" y2="%.0f" stroke="#ddd"/><text x="%d" y="%.0f" text-anchor="end">%.0f</text>`+"\n",
			left, width-20, y, y, left-6, y+4, maxRate*float64(i)/4)
	}
	colors := []string{"#3b7dd8", "#e08a2c"}
	for i, r := range rs {
		x0 := float64(left) + groupW*float64(i) + groupW*0.15
		bw := groupW * 0.35
		for j, v := range []float64{r.pubRate, r.consRate} {
			h := plotH * v / maxRate
			x := x0 + float64(j)*bw
			fmt.Fprintf(w, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="%s"/><text x="%.0f" y="%.0f" text-anchor="middle">%.0f</text>`+"\n",
				x, float64(height-bottom)-h, bw-4, h, colors[j], x+bw/2-2, float64(height-bottom)-h-4, v)
		}
		fmt.Fprintf(w, `<text x="%.0f" y="%d" text-anchor="middle">%s</text>`+"\n", x0+bw, height-bottom+18, html.EscapeString(r.name))
		fmt.Fprintf(w, `<text x="%.0f" y="%d" text-anchor="middle" fill="#555">p50 %v · p99 %v</text>`+"\n", x0+bw, height-bottom+34, r.p50, r.p99)
	}
	fmt.Fprintf(w, `<rect x="%d" y="34" width="10" height="10" fill="%s"/><text x="%d" y="43">publish</text><rect x="%d" y="34" width="10" height="10" fill="%s"/><text x="%d" y="43">consume+ack</text>`+"\n",
		width-220, colors[0], width-206, width-140, colors[1], width-126)
	fmt.Fprintln(w, `</svg>`)
}
