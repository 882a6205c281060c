package router

import (
	"context"
	"sync"

	"github.com/omnibusmq/omnibus/pubsub"
)

// batchRound runs one batch through the middleware chain: each message goes
// through its own copy of the chain, on its own goroutine, down to a gate
// that collects the messages reaching it. When every message of the batch
// has reached the gate or returned without reaching it (Dedup skipping a
// duplicate, a busy claim, a middleware that settled it), the gate runs the
// batch handler once for the messages that reached it and gives each of
// them the batch's result, which then travels back up its chain (Retry,
// Poison, Dedup's Complete act on it per message). When the batch fails
// with an error not marked with Redeliver, the gate runs each of those
// messages alone and gives each its own result, so that one bad message
// cannot fail (or poison) the others. A message that reaches the gate again
// after that (a middleware retrying it) runs alone.
type batchRound struct {
	rt      *route
	mu      sync.Mutex
	pending int               // messages that neither reached the gate nor returned
	reached []bool            // per message: it reached the gate (or returned)
	msgs    []*pubsub.Message // the messages that reached it, in arrival order
	idx     []int             // their indexes in the batch
	fired   bool
	done    chan struct{} // closed when the results are in
	errs    []error       // per message of the batch: its result at the gate
}

// runBatchRound runs batch through the chain and returns each message's result.
func (rt *route) runBatchRound(batch []*pubsub.Delivery) []error {
	g := &batchRound{rt: rt, pending: len(batch), reached: make([]bool, len(batch)), done: make(chan struct{}), errs: make([]error, len(batch))}
	results := make([]error, len(batch))
	var wg sync.WaitGroup
	wg.Add(len(batch))
	for i, d := range batch {
		chain := compose(func(ctx context.Context, m *pubsub.Message) error { return g.arrive(ctx, i, m) }, rt.mws)
		go func() {
			defer wg.Done()
			results[i] = call(chain, rt.ctx, d.Message)
			g.leave(i)
		}()
	}
	wg.Wait()
	return results
}

// arrive is the innermost handler of message i's chain.
func (g *batchRound) arrive(ctx context.Context, i int, m *pubsub.Message) error {
	g.mu.Lock()
	if g.fired || g.reached[i] {
		g.mu.Unlock()
		return callBatch(g.rt.bh, ctx, []*pubsub.Message{m})
	}
	g.reached[i] = true
	g.msgs = append(g.msgs, m)
	g.idx = append(g.idx, i)
	g.pending--
	if g.pending == 0 {
		g.fire() // unlocks
		return g.errs[i]
	}
	g.mu.Unlock()
	select {
	case <-g.done:
		return g.errs[i]
	case <-ctx.Done():
		// A middleware's deadline (Timeout, a Dedup lease) ended first;
		// the batch may still run with this message in it.
		return ctx.Err()
	}
}

// leave records that message i's chain returned.
func (g *batchRound) leave(i int) {
	g.mu.Lock()
	if g.fired || g.reached[i] {
		g.mu.Unlock()
		return
	}
	g.reached[i] = true // it left without reaching the gate
	g.pending--
	if g.pending == 0 {
		g.fire()
		return
	}
	g.mu.Unlock()
}

// fire runs the batch handler for the messages that reached the gate. g.mu
// is held on entry and released.
func (g *batchRound) fire() {
	g.fired = true
	msgs, idx := g.msgs, g.idx
	g.mu.Unlock()
	defer close(g.done)
	if len(msgs) == 0 {
		return
	}
	for j, err := range g.rt.batchResults(msgs) {
		g.errs[idx[j]] = err
	}
}

// batchResults runs the batch handler on msgs and returns each message's
// result: the batch's, or, after an error not marked with Redeliver, each
// message's own (run alone), so that one bad message cannot fail the others.
func (rt *route) batchResults(msgs []*pubsub.Message) []error {
	errs := make([]error, len(msgs))
	err := callBatch(rt.bh, rt.ctx, msgs)
	if _, marked := RedeliverDelay(err); err == nil || marked || len(msgs) == 1 {
		for j := range errs {
			errs[j] = err
		}
		return errs
	}
	if rt.ctx.Err() == nil {
		rt.r.log.Warn("router: batch failed; running its messages one by one", "topic", rt.topic, "handler", rt.name, "size", len(msgs), "error", err)
	}
	for j, m := range msgs {
		if errs[j] = rt.ctx.Err(); errs[j] == nil {
			errs[j] = callBatch(rt.bh, rt.ctx, []*pubsub.Message{m})
		}
	}
	return errs
}
