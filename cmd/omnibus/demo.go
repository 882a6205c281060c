package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
)

// DemoCmd publishes orders and consumes them in two consumer groups.
type DemoCmd struct {
	URL    string `help:"Broker URL." default:"mem://demo"`
	Orders int    `help:"Orders to publish." default:"20000"`
	Topic  string `help:"Topic name." default:"orders.created"`
	Nack   int    `help:"In the billing group, nack every Nth order once (0 = never) to show redelivery." default:"50"`
	// Pipeline is the number of orders sent through the router pipeline
	// with injected faults (demo_router.go).
	Pipeline int `help:"Orders sent through the router pipeline with injected faults: transient failures, invalid orders, duplicates (0 = skip)." default:"5000"`
	// Outbox writes the pipeline's orders through the transactional outbox
	// on SQLite (demo_outbox.go) instead of publishing them directly.
	Outbox bool `help:"Write the pipeline's orders through a transactional outbox on in-memory SQLite, relayed to the broker." default:"true" negatable:""`
}

type order struct {
	ID       int     `json:"id"`
	Customer string  `json:"customer"`
	Amount   float64 `json:"amount"`
}

type groupStats struct {
	name        string
	delivered   atomic.Int64 // first deliveries of distinct orders
	acked       atomic.Int64
	redelivered atomic.Int64
}

// Run runs the demo and fails if the numbers do not add up.
func (d *DemoCmd) Run(ctx context.Context) error {
	if err := runBasicDemo(ctx, stdout, d); err != nil {
		return err
	}
	return runRouterDemo(ctx, stdout, d)
}

func runBasicDemo(ctx context.Context, out io.Writer, d *DemoCmd) error {
	if d.Orders < 1 {
		return fmt.Errorf("demo: --orders=%d: want at least 1", d.Orders)
	}
	client, err := pubsub.Open(ctx, d.URL)
	if err != nil {
		return err
	}
	defer client.Close()
	fmt.Fprintf(out, "omnibus demo on %s: %d orders to %q, groups billing and shipping\n", pubsub.Redact(d.URL), d.Orders, d.Topic)

	groups := []*groupStats{{name: "billing"}, {name: "shipping"}}
	subs := make([]*pubsub.Subscription, len(groups))
	for i, g := range groups {
		s, err := client.Subscribe(ctx, d.Topic, pubsub.Group(g.name))
		if err != nil {
			return err
		}
		defer s.Close()
		subs[i] = s
	}

	start := time.Now()
	runCtx, cancel := context.WithTimeout(ctx, 50*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(groups)+1)
	for i, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- consume(runCtx, subs[i], g, d.Orders, d.Nack)
		}()
	}

	// The publisher is waited for too: consumers may have every message
	// before the last Publish has its confirmation (a broker that syncs
	// its journal before it confirms).
	var published atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		const batch = 100
		for i := 0; i < d.Orders; i += batch {
			n := min(batch, d.Orders-i)
			msgs := make([]*pubsub.Message, n)
			for j := range msgs {
				id := i + j
				body, _ := json.Marshal(order{ID: id, Customer: fmt.Sprintf("c%d", id%97), Amount: float64(id%1000) + 0.99})
				msgs[j] = &pubsub.Message{Key: fmt.Sprintf("c%d", id%97), Payload: body,
					Metadata: map[string]string{"order-id": fmt.Sprint(id)}}
			}
			if err := client.Publish(runCtx, d.Topic, msgs...); err != nil {
				errs <- fmt.Errorf("demo: publish: %w", err)
				cancel()
				return
			}
			published.Add(int64(n))
		}
	}()

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	live := newLiveLine(out)
	const line = "  published %6d   billing %6d   shipping %6d"
	progress := func() { live.update(line, published.Load(), groups[0].acked.Load(), groups[1].acked.Load()) }
loop:
	for {
		select {
		case <-done:
			break loop
		case <-tick.C:
			progress()
		}
	}
	live.done(line, published.Load(), groups[0].acked.Load(), groups[1].acked.Load())
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	elapsed := time.Since(start)

	pub := published.Load()
	var delivered, acked, redelivered int64
	fmt.Fprintf(out, "\n%-10s %10s %10s %12s\n", "group", "delivered", "acked", "redelivered")
	for _, g := range groups {
		fmt.Fprintf(out, "%-10s %10d %10d %12d\n", g.name, g.delivered.Load(), g.acked.Load(), g.redelivered.Load())
		delivered += g.delivered.Load()
		acked += g.acked.Load()
		redelivered += g.redelivered.Load()
	}
	fmt.Fprintf(out, "%-10s %10d %10d %12d\n", "total", delivered, acked, redelivered)
	fmt.Fprintf(out, "\npublished %d; delivered %d = published × %d groups; %.0f msg/s delivered in %v\n",
		pub, delivered, len(groups), float64(delivered+redelivered)/elapsed.Seconds(), elapsed.Round(time.Millisecond))
	if delivered != pub*int64(len(groups)) || acked != delivered {
		return fmt.Errorf("demo: numbers do not add up: published %d × %d groups != delivered %d (acked %d)", pub, len(groups), delivered, acked)
	}
	return nil
}

// consume receives until want distinct orders were acked.
func consume(ctx context.Context, s *pubsub.Subscription, g *groupStats, want, nackEvery int) error {
	seen := make([]bool, want)
	for g.acked.Load() < int64(want) {
		d, err := s.Receive(ctx)
		if err != nil {
			return fmt.Errorf("demo: group %s after %d of %d orders: %w", g.name, g.acked.Load(), want, err)
		}
		var o order
		if err := json.Unmarshal(d.Message.Payload, &o); err != nil || o.ID < 0 || o.ID >= want {
			_ = d.Ack()
			return fmt.Errorf("demo: group %s: bad order %q: %v", g.name, d.Message.Payload, err)
		}
		if d.Message.Attempt > 1 {
			g.redelivered.Add(1)
		}
		if !seen[o.ID] {
			seen[o.ID] = true
			g.delivered.Add(1)
		}
		if g.name == "billing" && nackEvery > 0 && o.ID%nackEvery == 0 && d.Message.Attempt == 1 {
			_ = d.Nack(0)
			continue
		}
		if err := d.Ack(); err != nil {
			return err
		}
		g.acked.Add(1)
	}
	return nil
}
