package router

import (
	"fmt"
	"strings"

	"github.com/omnibusmq/omnibus/pubsub"
)

// Layer is one layer of a handler's chain: what Use and With take. Every
// Middleware is a Layer; omnibus's own middleware constructors return
// Ranked layers, whose order the router checks.
type Layer interface {
	// Wrap returns next wrapped by the layer.
	Wrap(next Handler) Handler
}

// Wrap returns m(next), making every Middleware a Layer.
func (m Middleware) Wrap(next Handler) Handler { return m(next) }

// Rank is the place a Ranked layer must take in a chain: a layer of lower
// rank must be outside (given to Use or With before) every layer of higher
// rank. Layers of equal rank, and layers without a rank (any Middleware),
// may go anywhere. The ranks of omnibus's middleware, outermost first (see
// docs/router.md for why):
//
//	RankObserve  telemetry's Middleware: sees the chain's final result
//	RankPoison   middleware.Poison: sees only the outcome after every retry
//	RankRetry    middleware.Retry: retries everything inside it
//	RankAttempt  middleware.Dedup, Timeout, Recover, telemetry's Attempts: once per attempt
type Rank int

// The ranks of omnibus's middleware, outermost first.
const (
	RankObserve Rank = 10 * (iota + 1)
	RankPoison
	RankRetry
	RankAttempt
)

// rankNames lists, per rank, the layers that have it, for panic messages.
var rankNames = map[Rank]string{
	RankObserve: "telemetry.Middleware",
	RankPoison:  "middleware.Poison",
	RankRetry:   "middleware.Retry",
	RankAttempt: "middleware.Dedup, middleware.Timeout, middleware.Recover, telemetry.Attempts",
}

// Ranked is a Middleware with its name and its place in a chain. Use, With,
// Handle and HandleBatch panic when a Ranked layer would run outside one of
// lower rank.
type Ranked struct {
	// Name names the layer in panic messages, e.g. "middleware.Retry".
	Name string
	// Rank is the layer's place (see Rank).
	Rank Rank
	// Middleware is the layer itself.
	Middleware Middleware
}

// Wrap returns r.Middleware(next).
func (r Ranked) Wrap(next Handler) Handler { return r.Middleware(next) }

// checkOrder returns an error wrapping pubsub.ErrInvalid if a Ranked layer
// of chain (outermost first) is outside one of lower rank.
func checkOrder(chain []Layer) error {
	var outer *Ranked // the highest-ranked layer seen so far
	for _, l := range chain {
		r, ok := l.(Ranked)
		if !ok {
			if p, isPtr := l.(*Ranked); isPtr && p != nil {
				r, ok = *p, true
			}
		}
		if !ok {
			continue
		}
		if outer != nil && r.Rank < outer.Rank {
			return fmt.Errorf("router: middleware order: %s is outside %s but must be inside it; the order, outermost first, is %s (docs/router.md): %w",
				outer.Name, r.Name, orderText(), pubsub.ErrInvalid)
		}
		if outer == nil || r.Rank > outer.Rank {
			rr := r
			outer = &rr
		}
	}
	return nil
}

func orderText() string {
	parts := make([]string, 0, len(rankNames))
	for _, rk := range []Rank{RankObserve, RankPoison, RankRetry, RankAttempt} {
		parts = append(parts, "("+rankNames[rk]+")")
	}
	return strings.Join(parts, ", ")
}

func compose(h Handler, chain []Layer) Handler {
	for i := len(chain) - 1; i >= 0; i-- {
		h = chain[i].Wrap(h)
	}
	return h
}

// checkLayers panics if a layer is nil (a nil Middleware or a Ranked
// without one).
func checkLayers(where string, ls []Layer) error {
	for i, l := range ls {
		switch v := l.(type) {
		case nil:
			return fmt.Errorf("router: %s: layer %d is nil: %w", where, i, pubsub.ErrInvalid)
		case Middleware:
			if v == nil {
				return fmt.Errorf("router: %s: layer %d is a nil Middleware: %w", where, i, pubsub.ErrInvalid)
			}
		case Ranked:
			if v.Middleware == nil {
				return fmt.Errorf("router: %s: layer %d (%s) has a nil Middleware: %w", where, i, v.Name, pubsub.ErrInvalid)
			}
		}
	}
	return nil
}
